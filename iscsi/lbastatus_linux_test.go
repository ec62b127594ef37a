package iscsi

import (
	"fmt"
	"os"
	"testing"

	"github.com/isboot/isboot/internal/testkit/testtarget"
)

// lunMap walks the whole LUN with Extents, as an NBD client's block status queries do.
func lunMap(t *testing.T, l *LUN) []Extent {
	t.Helper()
	var all []Extent
	for off := int64(0); off < l.Size(); {
		ext, err := l.Extents(nil, off, l.Size()-off)
		if err != nil || len(ext) == 0 {
			t.Fatalf("Extents at %d: %v, %v", off, ext, err)
		}
		for _, e := range ext {
			if n := len(all) - 1; n >= 0 && all[n].Flags == e.Flags {
				all[n].Length += e.Length
			} else {
				all = append(all, e)
			}
			off += e.Length
		}
	}
	return all
}

// fileMap is what the LUN must report for a backing file: its data ranges mapped,
// the rest deallocated and (LBPRZ) zero.
func fileMap(t *testing.T, path string, size int64) []Extent {
	var m []Extent
	pos := int64(0)
	for _, r := range testtarget.DataRanges(t, path) {
		r.End = min(r.End, size)
		if r.Off > pos {
			m = append(m, Extent{Length: r.Off - pos, Flags: ExtentHole | ExtentZero})
		}
		if r.End > r.Off {
			m = append(m, Extent{Length: r.End - r.Off})
		}
		pos = max(pos, r.End)
	}
	if pos < size {
		m = append(m, Extent{Length: size - pos, Flags: ExtentHole | ExtentZero})
	}
	return m
}

// TestLUNExtentsTgtdThin reads the provisioning map of a thin-provisioned tgtd LUN
// with GET LBA STATUS and checks it against the backing file, before and after
// UNMAP and a write into a hole. A LUN without thin provisioning is all data.
func TestLUNExtentsTgtdThin(t *testing.T) {
	const size = 16 << 20
	backing := testtarget.CreateBacking(t, t.TempDir(), size)
	f, err := os.OpenFile(backing, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 64 << 10, 5 << 20, size - 8192} {
		f.WriteAt(pattern(8192, uint64(off)), off)
	}
	f.Close()
	d := startTgtd(t, testtarget.TgtdOptions{Backing: backing, LUNParams: "thin_provisioning=1"})
	s := dial(t, testConfig(d))
	l := s.LUN()
	if !l.lbaStatus.Load() || !l.lbprz {
		t.Fatalf("tgtd with thin_provisioning=1: LBPME %v, LBPRZ %v", l.lbaStatus.Load(), l.lbprz)
	}
	want := fileMap(t, backing, size)
	if len(want) < 5 {
		t.Fatalf("backing file not sparse here: %v", want)
	}
	if got := lunMap(t, l); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("LUN map %v, backing file %v", got, want)
	}
	if err := l.Unmap(0, 8192); err != nil {
		t.Fatal(err)
	}
	if _, err := l.WriteAt(pattern(4096, 9), 8<<20); err != nil {
		t.Fatal(err)
	}
	l.Flush()
	want = fileMap(t, backing, size)
	if got := lunMap(t, l); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after UNMAP and a write: LUN map %v, backing file %v", got, want)
	}
	if !l.lbaStatus.Load() {
		t.Error("the LUN stopped asking GET LBA STATUS")
	}

	thick := startTgtd(t, testtarget.TgtdOptions{Backing: backing})
	tl := dial(t, testConfig(thick)).LUN()
	if tl.lbaStatus.Load() {
		t.Error("a LUN without thin provisioning claims LBPME")
	}
	if got := lunMap(t, tl); fmt.Sprint(got) != fmt.Sprint([]Extent{{Length: size}}) {
		t.Errorf("LUN without thin provisioning: map %v, want all data", got)
	}
}
