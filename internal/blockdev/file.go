package blockdev

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// File is a regular file or a block device as a Device, with 512-byte blocks: a
// testing aid (`isboot serve --image`) and a peer that keeps what is written.
type File struct {
	f        *os.File
	size     int64
	readOnly bool
}

// OpenFile opens path as a Device; a size that is not a multiple of 512 is rounded down.
func OpenFile(path string, readOnly bool) (*File, error) {
	mode := os.O_RDWR
	if readOnly {
		mode = os.O_RDONLY
	}
	f, err := os.OpenFile(path, mode, 0)
	if err != nil {
		return nil, err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err == nil && size < 512 {
		err = errors.New("want at least 512 bytes")
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: size %d: %w", path, size, err)
	}
	return &File{f: f, size: size - size%512, readOnly: readOnly}, nil
}

func (d *File) ReadAt(p []byte, off int64) (int, error) { return d.f.ReadAt(p, off) }

func (d *File) WriteAt(p []byte, off int64) (int, error) {
	if d.readOnly {
		return 0, ErrReadOnly
	}
	return d.f.WriteAt(p, off)
}

func (d *File) WriteAtFUA(p []byte, off int64) (int, error) {
	n, err := d.WriteAt(p, off)
	if err == nil {
		err = datasync(d.f)
	}
	return n, err
}

func (d *File) Flush() error {
	if d.readOnly {
		return nil
	}
	return datasync(d.f)
}

// Unmap punches a hole where the file system can; it is only a hint.
func (d *File) Unmap(off, length int64) error {
	if d.readOnly {
		return ErrReadOnly
	}
	punchHole(d.f, off, length)
	return nil
}

func (d *File) WriteZeroes(off, length int64) error {
	if d.readOnly {
		return ErrReadOnly
	}
	if zeroRange(d.f, off, length) == nil {
		return nil
	}
	zero := make([]byte, min(length, 1<<20))
	for length > 0 {
		n := min(length, int64(len(zero)))
		if _, err := d.f.WriteAt(zero[:n], off); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

func (d *File) Size() int64    { return d.size }
func (d *File) BlockSize() int { return 512 }
func (d *File) ReadOnly() bool { return d.readOnly }

// Close flushes and closes the file.
func (d *File) Close() error { return errors.Join(d.Flush(), d.f.Close()) }
