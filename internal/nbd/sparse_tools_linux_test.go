package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/iscsi"
)

// mapEntry is one line of `nbdinfo --map --json`.
type mapEntry struct {
	Offset      int64  `json:"offset"`
	Length      int64  `json:"length"`
	Type        uint32 `json:"type"`
	Description string `json:"description"`
}

func nbdinfoMap(t *testing.T, uri string) []mapEntry {
	t.Helper()
	out := run(t, "nbdinfo", "--map", "--json", uri)
	var m []mapEntry
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
	}
	return m
}

// wantMap turns data ranges into the map nbdinfo should print for a device of size
// bytes whose other bytes are holes that read as zeroes.
func wantMap(data []testtarget.Range, size int64) []mapEntry {
	var m []mapEntry
	add := func(off, end int64, typ uint32, desc string) {
		if end > off {
			m = append(m, mapEntry{off, end - off, typ, desc})
		}
	}
	pos := int64(0)
	for _, r := range data {
		add(pos, r.Off, 3, "hole,zero")
		add(r.Off, min(r.End, size), 0, "data")
		pos = min(r.End, size)
	}
	add(pos, size, 3, "hole,zero")
	return m
}

// TestNbdinfoMapAndCan: libnbd negotiates structured replies and base:allocation, and
// `nbdinfo --map` shows the holes and data of the device.
func TestNbdinfoMapAndCan(t *testing.T) {
	testenv.Require(t, "integration test", "nbdinfo")
	const size = 8 << 20
	dev := blockdev.NewMem(size, 512, false)
	var data []testtarget.Range
	for _, r := range [][2]int64{{0, 1 << 20}, {3 << 20, 3<<20 + 4096}, {5<<20 + 512, 5<<20 + 1024}, {size - 512, size}} {
		data = append(data, testtarget.Range{Off: r[0], End: r[1]})
	}
	for i, r := range data {
		dev.WriteAt(randBytes(int(r.End-r.Off), uint64(i+1)), r.Off)
	}
	sock, _ := serveUnix(t, dev, Options{})
	uri := nbdURI(sock)
	for _, can := range []string{"structured-reply", "df", "flush", "fua", "trim", "zero", "multi-conn"} {
		if err := exec.Command("nbdinfo", "--can", can, uri).Run(); err != nil {
			t.Errorf("nbdinfo --can %s: %v", can, err)
		}
	}
	if err := exec.Command("nbdinfo", "--can", "cache", uri).Run(); err == nil {
		t.Error("nbdinfo --can cache: yes, but NBD_CMD_CACHE is not offered")
	}
	got, want := nbdinfoMap(t, uri), wantMap(data, size)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("nbdinfo --map:\n%v\nwant\n%v", got, want)
	}
	// A device that cannot tell allocation is one data extent.
	plain, _ := serveUnix(t, plainDev{dev}, Options{})
	if got := nbdinfoMap(t, nbdURI(plain)); fmt.Sprint(got) != fmt.Sprint([]mapEntry{{0, size, 0, "data"}}) {
		t.Errorf("nbdinfo --map without allocation information: %v", got)
	}
	out := run(t, "nbdinfo", "--json", uri)
	var info struct {
		Structured bool `json:"structured"`
		Exports    []struct {
			Contexts []string `json:"contexts"`
		}
	}
	if err := json.Unmarshal(out, &info); err != nil || !info.Structured || len(info.Exports) != 1 ||
		fmt.Sprint(info.Exports[0].Contexts) != "[base:allocation]" {
		t.Errorf("nbdinfo --json: %v\n%s", err, out)
	}
}

// TestNbdcopySkipsHoles: nbdcopy reads only the data extents, and the copy is exact.
func TestNbdcopySkipsHoles(t *testing.T) {
	testenv.Require(t, "integration test", "nbdcopy")
	const size = 32 << 20
	dev := blockdev.NewMem(size, 512, false)
	var dataBytes int64
	for i, off := range []int64{0, 7 << 20, 20<<20 + 4096, size - 65536} {
		n := int64(65536)
		dev.WriteAt(randBytes(int(n), uint64(i+10)), off)
		dataBytes += n
	}
	sock, srv := serveUnix(t, dev, Options{})
	out := filepath.Join(t.TempDir(), "copy")
	run(t, "nbdcopy", nbdURI(sock), out)
	want := make([]byte, size)
	dev.ReadAt(want, 0)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Fatal("nbdcopy copy differs from the device")
	}
	rb := srv.Stats().ReadBytes
	if rb > uint64(dataBytes)+4<<20 {
		t.Errorf("nbdcopy read %d bytes of a %d-byte device holding %d bytes of data: holes not skipped", rb, size, dataBytes)
	}
	t.Logf("nbdcopy read %d bytes of %d (%d bytes of data)", rb, size, dataBytes)
}

// TestSparseLUNThroughGateway serves a thin-provisioned tgtd LUN as `isboot serve`
// does (iSCSI session, its LUN straight into the NBD server): nbdinfo --map shows
// the backing file's holes, and nbdcopy copies the LUN exactly, reading only its data.
func TestSparseLUNThroughGateway(t *testing.T) {
	testenv.Require(t, "integration test", "tgtd", "nbdinfo", "nbdcopy")
	const size = 32 << 20
	backing := testtarget.CreateBacking(t, t.TempDir(), size)
	f, err := os.OpenFile(backing, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, off := range []int64{0, 4 << 20, 9<<20 + 8192, size - 16384} {
		f.WriteAt(randBytes(65536-i*16384, uint64(i+20)), off)
	}
	f.Close()
	d := testtarget.StartTgtd(t, testtarget.TgtdOptions{Port: testtarget.FreePort(t, 13400, 13449),
		ControlPort: 43, Backing: backing, LUNParams: "thin_provisioning=1"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess, err := iscsi.Dial(ctx, iscsi.Config{Portals: []string{d.Addr()}, TargetName: d.IQN, LUN: 1,
		InitiatorName: "iqn.2026-01.org.isboot.test:sparse", Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	sock, srv := serveUnix(t, sess.LUN(), Options{ExportName: d.IQN})
	uri := nbdURI(sock)

	ranges := testtarget.DataRanges(t, backing)
	var dataBytes int64
	for _, r := range ranges {
		dataBytes += r.End - r.Off
	}
	got, want := nbdinfoMap(t, uri), wantMap(ranges, size)
	if len(want) < 5 || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("nbdinfo --map:\n%v\nwant (from the backing file)\n%v", got, want)
	}
	t.Logf("nbdinfo --map:\n%s", run(t, "nbdinfo", "--map", uri))

	out := filepath.Join(t.TempDir(), "copy")
	before := srv.Stats().ReadBytes
	run(t, "nbdcopy", uri, out)
	wantBytes, _ := os.ReadFile(backing)
	if gotBytes, _ := os.ReadFile(out); !bytes.Equal(gotBytes, wantBytes) {
		t.Fatal("nbdcopy of the LUN differs from the backing file")
	}
	rb := srv.Stats().ReadBytes - before
	if rb > uint64(dataBytes)+4<<20 {
		t.Errorf("nbdcopy read %d bytes of a LUN with %d bytes of data: holes not skipped", rb, dataBytes)
	}
	t.Logf("nbdcopy read %d bytes of %d (%d bytes of data)", rb, size, dataBytes)
}

// TestQemuStructuredReplies: QEMU's NBD client, which checks every chunk, reads and
// maps the export through structured replies, including an unaligned read.
func TestQemuStructuredReplies(t *testing.T) {
	testenv.Require(t, "integration test", "qemu-img", "qemu-io")
	const size = 4 << 20
	dev := blockdev.NewMem(size, 512, false)
	data := randBytes(1<<20, 31)
	dev.WriteAt(data, 1<<20)
	sock, _ := serveUnix(t, dev, Options{})
	uri := nbdURI(sock)
	out := filepath.Join(t.TempDir(), "copy")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out)
	want := make([]byte, size)
	dev.ReadAt(want, 0)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Error("qemu-img convert: copy differs from the device")
	}
	var m []struct {
		Start, Length int64
		Zero, Data    bool
	}
	if err := json.Unmarshal(run(t, "qemu-img", "map", "--output=json", "-f", "raw", uri), &m); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(m) != fmt.Sprint([]struct {
		Start, Length int64
		Zero, Data    bool
	}{{0, 1 << 20, true, false}, {1 << 20, 1 << 20, false, true}, {2 << 20, 2 << 20, true, false}}) {
		t.Errorf("qemu-img map: %+v", m)
	}
	// qemu-io compares an unaligned read with the pattern byte of data[1000-ish].
	off := int64(1<<20 + 1000)
	res := run(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("read -P %d %d 1", data[1000], off), uri)
	if !bytes.Contains(res, []byte("read 1/1 bytes")) {
		t.Errorf("qemu-io unaligned read: %s", res)
	}
}
