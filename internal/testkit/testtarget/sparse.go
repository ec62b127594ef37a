package testtarget

import (
	"errors"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Range is a byte range [Off, End) of a file.
type Range struct{ Off, End int64 }

// DataRanges returns the allocated ranges of a sparse file, as the file system
// reports them with SEEK_DATA and SEEK_HOLE (what tgtd answers GET LBA STATUS from
// on a LUN with thin_provisioning=1).
func DataRanges(t testing.TB, path string) []Range {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	var rs []Range
	for off := int64(0); ; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			return rs // no data after off
		}
		if err != nil {
			t.Fatalf("SEEK_DATA %s at %d: %v", path, off, err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatalf("SEEK_HOLE %s at %d: %v", path, data, err)
		}
		rs = append(rs, Range{data, hole})
		off = hole
	}
}
