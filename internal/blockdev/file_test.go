package blockdev

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var (
	_ Device = (*File)(nil)
	_ Device = ReadOnly{}
)

func TestFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(path, bytes.Repeat([]byte{0xaa}, 8192+100), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := OpenFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	if d.Size() != 8192 || d.BlockSize() != 512 || d.ReadOnly() {
		t.Errorf("size %d, block %d, read-only %v; want 8192 (rounded down), 512, false", d.Size(), d.BlockSize(), d.ReadOnly())
	}
	data := bytes.Repeat([]byte("isboot"), 1024)[:4096]
	if _, err := d.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAtFUA(data[:512], 4096); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteZeroes(1024, 1024); err != nil {
		t.Fatal(err)
	}
	if err := d.Unmap(6144, 1024); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4608)
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := append(append(append(data[:1024:1024], make([]byte, 1024)...), data[2048:]...), data[:512]...)
	if !bytes.Equal(got, want) {
		t.Error("read back differs from what was written and zeroed")
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b[:4608], want) {
		t.Error("the file differs from what was written")
	}

	ro, err := OpenFile(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	_, werr := ro.WriteAt(data[:512], 0)
	for _, err := range []error{werr, ro.Unmap(0, 512), ro.WriteZeroes(0, 512)} {
		if !IsReadOnly(err) {
			t.Errorf("read-only file: %v, want a read-only refusal", err)
		}
	}
	if !ro.ReadOnly() || ro.Flush() != nil {
		t.Error("read-only file: ReadOnly false or Flush fails")
	}
}

func TestOpenFileErrors(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	os.WriteFile(small, make([]byte, 511), 0o600)
	if _, err := OpenFile(small, false); err == nil || !strings.Contains(err.Error(), "size 511") {
		t.Errorf("511-byte file: %v", err)
	}
	if _, err := OpenFile(filepath.Join(dir, "missing"), true); !os.IsNotExist(err) {
		t.Errorf("missing file: %v", err)
	}
}

// ReadOnly refuses every write and passes reads through.
func TestReadOnly(t *testing.T) {
	m := NewMem(4096, 512, false)
	m.WriteAt([]byte("boot"), 0)
	d := ReadOnly{m}
	_, werr := d.WriteAt([]byte("x"), 0)
	_, ferr := d.WriteAtFUA([]byte("x"), 0)
	for _, err := range []error{werr, ferr, d.Unmap(0, 512), d.WriteZeroes(0, 512)} {
		if !IsReadOnly(err) {
			t.Errorf("%v, want a read-only refusal", err)
		}
	}
	got := make([]byte, 4)
	if _, err := d.ReadAt(got, 0); err != nil || string(got) != "boot" || !d.ReadOnly() || d.Size() != 4096 {
		t.Errorf("read %q, %v; read-only %v, size %d", got, err, d.ReadOnly(), d.Size())
	}
}
