package blockdev

import (
	"sync"
)

// Mem is an in-memory Device, used by tests and benchmarks as a peer with no I/O cost.
type Mem struct {
	mu        sync.RWMutex
	data      []byte
	blockSize int
	readOnly  bool
}

// NewMem returns a zero-filled device of size bytes.
func NewMem(size int64, blockSize int, readOnly bool) *Mem {
	return &Mem{data: make([]byte, size), blockSize: blockSize, readOnly: readOnly}
}

func (m *Mem) check(n int, off int64) error {
	if off < 0 || off+int64(n) > int64(len(m.data)) {
		return ErrOutOfRange
	}
	return nil
}

func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := m.check(len(p), off); err != nil {
		return 0, err
	}
	return copy(p, m.data[off:]), nil
}

func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	if m.readOnly {
		return 0, ErrReadOnly
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(len(p), off); err != nil {
		return 0, err
	}
	return copy(m.data[off:], p), nil
}

func (m *Mem) WriteAtFUA(p []byte, off int64) (int, error) { return m.WriteAt(p, off) }

func (m *Mem) Flush() error                  { return nil }
func (m *Mem) Unmap(off, length int64) error { return m.WriteZeroes(off, length) }

func (m *Mem) WriteZeroes(off, length int64) error {
	if m.readOnly {
		return ErrReadOnly
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(int(length), off); err != nil {
		return err
	}
	clear(m.data[off : off+length])
	return nil
}

func (m *Mem) Size() int64    { return int64(len(m.data)) }
func (m *Mem) BlockSize() int { return m.blockSize }
func (m *Mem) ReadOnly() bool { return m.readOnly }
