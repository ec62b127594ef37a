package blockdev_test

import (
	"bytes"
	"fmt"
	"slices"
	"testing"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/iscsi"
)

// The iSCSI LUN and Mem tell allocation; the LUN without importing this package.
var (
	_ blockdev.Extenter = (*iscsi.LUN)(nil)
	_ blockdev.Extenter = (*blockdev.Mem)(nil)
)

func TestExtentFlagsAgreeAcrossPackages(t *testing.T) {
	if blockdev.ExtentHole != iscsi.ExtentHole || blockdev.ExtentZero != iscsi.ExtentZero {
		t.Error("iscsi's extent flags differ from blockdev's")
	}
}

func TestMemExtents(t *testing.T) {
	m := blockdev.NewMem(64<<10, 512, false)
	m.WriteAt([]byte{1}, 4096)   // block [4096, 4608) is data
	m.WriteAt([]byte{1}, 5*1024) // block [5120, 5632) too
	const hz = blockdev.ExtentHole | blockdev.ExtentZero
	for _, c := range []struct {
		off, n int64
		want   []blockdev.Extent
	}{
		{0, 64 << 10, []blockdev.Extent{{Length: 4096, Flags: hz}, {Length: 512}, {Length: 512, Flags: hz}, {Length: 512}, {Length: 64<<10 - 5632, Flags: hz}}},
		{4096, 512, []blockdev.Extent{{Length: 512}}},
		{8192, 4096, []blockdev.Extent{{Length: 4096, Flags: hz}}},
	} {
		got, err := m.Extents(nil, c.off, c.n)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("Extents(%d, %d) = %v, %v; want %v", c.off, c.n, got, err, c.want)
		}
	}
	if _, err := m.Extents(nil, 60<<10, 8192); !blockdev.IsOutOfRange(err) {
		t.Errorf("Extents past the end: %v", err)
	}
	// An answer is bounded, like a device's: alternating blocks stop it early.
	big := blockdev.NewMem(4<<20, 512, false)
	for off := int64(0); off < 4<<20; off += 1024 {
		big.WriteAt([]byte{1}, off)
	}
	got, err := big.Extents(nil, 0, 4<<20)
	var sum int64
	for _, e := range got {
		sum += e.Length
	}
	if err != nil || len(got) != 1024 || sum != 1024*512 {
		t.Errorf("alternating blocks: %d extents covering %d bytes, %v", len(got), sum, err)
	}
}

func TestReadOnlyKeepsExtents(t *testing.T) {
	m := blockdev.NewMem(64<<10, 4096, false)
	m.WriteAt(bytes.Repeat([]byte{1}, 4096), 8192)
	want, err := m.Extents(nil, 0, 64<<10)
	if err != nil || len(want) < 3 {
		t.Fatalf("Mem's extents: %v, %v", want, err)
	}
	got, err := blockdev.ReadOnly{Device: m}.Extents(nil, 0, 64<<10)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("read-only extents %v, %v; the device's %v", got, err, want)
	}
	// Only Device's methods: the wrapped device has no map.
	plain := struct{ blockdev.Device }{m}
	if got, _ := (blockdev.ReadOnly{Device: plain}).Extents(nil, 0, 8192); len(got) != 1 || got[0].Length != 8192 || got[0].Flags != 0 {
		t.Fatalf("a device without a map: %v, want one data extent", got)
	}
}
