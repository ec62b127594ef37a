package debroot

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// CopyTo writes a private, writable copy of the image to dst, keeping it
// sparse: only the data extents are copied (SEEK_DATA/SEEK_HOLE), so a copy
// of the 2 GiB disk costs what the root holds, not 2 GiB.
func (img Image) CopyTo(dst string) error {
	return sparseCopy(img.Path, dst)
}

func sparseCopy(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("debroot: copy: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("debroot: copy: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("debroot: copy: %w", err)
	}
	size := st.Size()
	fd := int(in.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			out.Close()
			return fmt.Errorf("debroot: copy: seek data: %w", err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			out.Close()
			return fmt.Errorf("debroot: copy: seek hole: %w", err)
		}
		if _, err := io.Copy(io.NewOffsetWriter(out, data), io.NewSectionReader(in, data, hole-data)); err != nil {
			out.Close()
			return fmt.Errorf("debroot: copy %s: %w", dst, err)
		}
		off = hole
	}
	if err := out.Truncate(size); err != nil {
		out.Close()
		return fmt.Errorf("debroot: copy: %w", err)
	}
	return out.Close()
}
