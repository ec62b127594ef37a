package blockdev

import (
	"os"

	"golang.org/x/sys/unix"
)

func datasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }

func punchHole(f *os.File, off, length int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}

// zeroRange zeroes without writing where the file system can; a hole reads as zeroes too.
func zeroRange(f *os.File, off, length int64) error {
	fd := int(f.Fd())
	if err := unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length); err == nil {
		return nil
	}
	return punchHole(f, off, length)
}
