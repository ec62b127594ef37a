package nbd

import "sync"

// bufPool hands out request buffers in power-of-two size classes and keeps returned
// ones for reuse, so steady-state I/O allocates nothing (the serving daemon must not
// allocate on the path that the root filesystem's writeback depends on). It retains at
// most maxRetained bytes; anything beyond that is left to the garbage collector.
type bufPool struct {
	mu          sync.Mutex
	free        [][][]byte // free[i] holds buffers of minBuf<<i bytes
	retained    int64
	maxRetained int64
}

const minBuf = 4096

func newBufPool(maxBuf int, maxRetained int64) *bufPool {
	classes := 1
	for minBuf<<(classes-1) < maxBuf {
		classes++
	}
	return &bufPool{free: make([][][]byte, classes), maxRetained: maxRetained}
}

func sizeClass(n int) int {
	c := 0
	for minBuf<<c < n {
		c++
	}
	return c
}

// get returns a buffer of length n; its contents are unspecified.
func (p *bufPool) get(n int) []byte {
	c := sizeClass(n)
	if c >= len(p.free) {
		return make([]byte, n) // larger than any request we accept: bounce buffers only
	}
	p.mu.Lock()
	if l := len(p.free[c]); l > 0 {
		b := p.free[c][l-1]
		p.free[c] = p.free[c][:l-1]
		p.retained -= int64(cap(b))
		p.mu.Unlock()
		return b[:n]
	}
	p.mu.Unlock()
	return make([]byte, n, minBuf<<c)
}

func (p *bufPool) put(b []byte) {
	c := sizeClass(cap(b))
	if c >= len(p.free) || minBuf<<c != cap(b) {
		return
	}
	p.mu.Lock()
	if p.retained+int64(cap(b)) <= p.maxRetained {
		p.free[c] = append(p.free[c], b[:cap(b)])
		p.retained += int64(cap(b))
	}
	p.mu.Unlock()
}
