package initramfs

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/pierrec/lz4/v4"
	"github.com/u-root/u-root/pkg/cpio"
)

// readArchive decompresses and parses an image into records (trailer excluded),
// with each record's contents read out.
func readArchive(t *testing.T, img []byte) ([]cpio.Record, map[string]string) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	rr := cpio.EOFReader{RecordReader: cpio.Newc.Reader(bytes.NewReader(raw))}
	var recs []cpio.Record
	contents := map[string]string{}
	for {
		r, err := rr.ReadRecord()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
		contents[r.Name] = string(b)
	}
	return recs, contents
}

func build(t *testing.T, a *Archive) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := a.WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("WriteTo returned %d, wrote %d", n, buf.Len())
	}
	return buf.Bytes()
}

func sample(t *testing.T, src string) *Archive {
	t.Helper()
	a := New()
	for _, err := range []error{
		a.AddFile("/init", src, 0o755),
		a.AddBytes("etc/hostname", []byte("guest\n"), 0o644),
		a.AddSymlink("bin/sh", "/init"),
		a.AddCharDev("dev/console", 0o600, 5, 1),
		a.AddDir("tmp", 0o777|os.ModeSticky),
		a.AddDir("proc", 0o555),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return a
}

func TestArchiveContentsAndOrder(t *testing.T) {
	src := filepath.Join(t.TempDir(), "init")
	if err := os.WriteFile(src, []byte("#!/bin/true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	recs, contents := readArchive(t, build(t, sample(t, src)))

	var names []string
	for _, r := range recs {
		names = append(names, r.Name)
		if r.MTime != 0 || r.UID != 0 || r.GID != 0 {
			t.Errorf("%s: mtime %d uid %d gid %d, want all 0", r.Name, r.MTime, r.UID, r.GID)
		}
	}
	want := "bin bin/sh dev dev/console etc etc/hostname init proc tmp"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("entries %q, want %q", got, want)
	}
	byName := map[string]cpio.Record{}
	for _, r := range recs {
		byName[r.Name] = r
	}
	checks := []struct {
		name string
		mode uint64
	}{
		{"init", cpio.S_IFREG | 0o755},
		{"bin", cpio.S_IFDIR | 0o755},
		{"bin/sh", cpio.S_IFLNK | 0o777},
		{"dev/console", cpio.S_IFCHR | 0o600},
		{"tmp", cpio.S_IFDIR | 0o1777},
	}
	for _, c := range checks {
		if got := byName[c.name].Mode; got != c.mode {
			t.Errorf("%s: mode %#o, want %#o", c.name, got, c.mode)
		}
	}
	if r := byName["dev/console"]; r.Rmajor != 5 || r.Rminor != 1 {
		t.Errorf("dev/console: %d:%d, want 5:1", r.Rmajor, r.Rminor)
	}
	if contents["init"] != "#!/bin/true\n" || contents["bin/sh"] != "/init" || contents["etc/hostname"] != "guest\n" {
		t.Errorf("contents: %q", contents)
	}
}

func TestArchiveIsReproducible(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "init")
	if err := os.WriteFile(src, []byte("payload"), 0o600); err != nil {
		t.Fatal(err)
	}
	first := build(t, sample(t, src))
	// Different host metadata must not change the image.
	if err := os.Chtimes(src, time.Unix(12345, 0), time.Unix(12345, 0)); err != nil {
		t.Fatal(err)
	}
	if second := build(t, sample(t, src)); !bytes.Equal(first, second) {
		t.Fatal("same inputs gave different images")
	}
	// And WriteFile writes the same bytes.
	out := filepath.Join(dir, "img.cpio.gz")
	if err := sample(t, src).WriteFile(out); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(out); !bytes.Equal(first, b) {
		t.Fatal("WriteFile differs from WriteTo")
	}
}

func TestArchiveRejectsBadInput(t *testing.T) {
	a := New()
	if err := a.AddBytes("a", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.AddBytes("/a", nil, 0o644); err == nil {
		t.Error("duplicate path accepted")
	}
	if err := a.AddDir("d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := a.AddDir("d/", 0o700); err != nil {
		t.Errorf("re-adding a directory: %v", err)
	}
	if err := a.AddBytes("/", nil, 0o644); err == nil {
		t.Error("empty path accepted")
	}
	if err := a.AddFile("x", filepath.Join(t.TempDir(), "missing"), 0o644); err == nil {
		t.Error("missing source accepted")
	}
	if err := a.AddFile("y", t.TempDir(), 0o644); err == nil {
		t.Error("directory as file source accepted")
	}
	if err := a.AddSymlink("l", ""); err == nil {
		t.Error("empty symlink target accepted")
	}
}

// TestArchiveGNUcpio checks interoperability: GNU cpio lists what we wrote.
func TestArchiveGNUcpio(t *testing.T) {
	testenv.RequireTools(t, "cpio interoperability test", "cpio")
	src := filepath.Join(t.TempDir(), "init")
	if err := os.WriteFile(src, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := sample(t, src)
	var raw bytes.Buffer
	if err := a.WriteCPIO(&raw); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-it", "--quiet")
	cmd.Stdin = &raw
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -it: %v: %s", err, out)
	}
	want := "bin\nbin/sh\ndev\ndev/console\netc\netc/hostname\ninit\nproc\ntmp\n"
	if string(out) != want {
		t.Fatalf("cpio -it listed %q, want %q", out, want)
	}
}

// TestArchiveCompressions writes one archive in each compression and checks that it
// unpacks to the same cpio: gzip and LZ4 through their Go readers, and LZ4 also
// through the lz4 tool when the machine has it. The LZ4 image must be the legacy
// frame (magic 0x184C2102) in more than one 8 MiB block, the only form the kernel's
// unpacker takes.
func TestArchiveCompressions(t *testing.T) {
	a := New()
	big := make([]byte, 9<<20) // two legacy blocks
	for i := range big {
		big[i] = byte(i / 4096 * 31)
	}
	if err := a.AddBytes("lib/big", big, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.AddBytes("etc/hostname", []byte("guest\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	if err := a.WriteCPIO(&want); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"gzip", "lz4", "none"} {
		c, err := ParseCompression(name)
		if err != nil {
			t.Fatal(err)
		}
		a.Compression = c
		img := build(t, a)
		var r io.Reader
		switch c {
		case Gzip:
			zr, err := gzip.NewReader(bytes.NewReader(img))
			if err != nil {
				t.Fatal(err)
			}
			r = zr
		case LZ4:
			if !bytes.HasPrefix(img, []byte{0x02, 0x21, 0x4c, 0x18}) {
				t.Fatalf("lz4 image starts % x, not the legacy magic", img[:4])
			}
			r = lz4.NewReader(bytes.NewReader(img))
		case None:
			r = bytes.NewReader(img)
		}
		got, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		if !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("%s: unpacked %d bytes, not the %d-byte cpio", c, len(got), want.Len())
		}
		if c == LZ4 {
			if _, err := exec.LookPath("lz4"); err == nil {
				cmd := exec.Command("lz4", "-d", "-c")
				cmd.Stdin = bytes.NewReader(img)
				out, err := cmd.Output()
				if err != nil || !bytes.Equal(out, want.Bytes()) {
					t.Fatalf("lz4 -d: %v, %d bytes", err, len(out))
				}
			}
		}
		t.Logf("%s: %d bytes", c, len(img))
	}
	if _, err := ParseCompression("zip"); err == nil {
		t.Error("ParseCompression took zip")
	}
}
