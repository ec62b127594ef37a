package main

import (
	"bytes"
	"compress/gzip"
	"go/parser"
	"go/token"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func kernel(t *testing.T) (dir, kver string) {
	t.Helper()
	cache := os.Getenv("ISBOOT_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "isboot")
	}
	b, err := os.ReadFile(filepath.Join(cache, "kernel", "current"))
	if err != nil {
		t.Skipf("no unpacked kernel (make deps): %v", err)
	}
	kver = strings.TrimSpace(string(b))
	return filepath.Join(cache, "kernel", kver), kver
}

func image(t *testing.T, o *options) []byte {
	t.Helper()
	a, err := build(o)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := a.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Same inputs, same bytes; and the image holds what the boot needs.
func TestReproducibleWithModules(t *testing.T) {
	if testing.Short() {
		t.Skip("compresses ~40 MB twice")
	}
	dir, kver := kernel(t)
	self, _ := os.Executable() // any executable stands in for isboot
	o := &options{isboot: self, kernelDir: dir, kver: kver, modules: defaultModules, rescue: "busybox"}
	if _, err := findBusybox(); err != nil {
		o.rescue = "none"
	}
	a, b := image(t, o), image(t, o)
	if !bytes.Equal(a, b) {
		t.Fatal("two builds from the same inputs differ")
	}
	zr, err := gzip.NewReader(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(zr)
	for _, want := range []string{"init\x00", "dev/console\x00", "newroot\x00", "bin/isboot\x00",
		"lib/modules/" + kver + "/modules.dep\x00", "lib/modules/" + kver + "/modules.alias\x00",
		"kernel/drivers/block/nbd.ko", "kernel/drivers/net/virtio_net.ko", "kernel/fs/ext4/ext4.ko",
		"kernel/drivers/net/ethernet/intel/e1000/e1000.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/crypto/crc32c_generic.ko"} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Errorf("image lacks %q", strings.TrimSuffix(want, "\x00"))
		}
	}
	if o.rescue == "busybox" && !bytes.Contains(raw, []byte("bin/busybox\x00")) {
		t.Error("image lacks bin/busybox")
	}
	t.Logf("image: %d bytes compressed, %d bytes of cpio", len(a), len(raw))
}

func TestBadInputs(t *testing.T) {
	dir, kver := kernel(t)
	self, _ := os.Executable()
	for _, o := range []*options{
		{isboot: "/nonexistent/isboot", kernelDir: dir, kver: kver, rescue: "none"},
		{isboot: self, kernelDir: dir, kver: kver, modules: []string{"no_such_module"}, rescue: "none"},
		{isboot: self, kernelDir: dir, kver: kver, rescue: "zsh"},
		{isboot: self, kernelDir: t.TempDir(), kver: kver, modules: []string{"nbd"}, rescue: "none"},
	} {
		if _, err := build(o); err == nil {
			t.Errorf("build(%+v): no error", o)
		}
	}
}

// tools.go blank-imports exactly the commands buildBB compiles, so that `go mod tidy`
// keeps what they need; a command added to one list and not the other fails here.
func TestToolsListsRescueCommands(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "tools.go", nil, parser.ImportsOnly)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		c, ok := strings.CutPrefix(p, "github.com/u-root/u-root/cmds/core/")
		if !ok || imp.Name == nil || imp.Name.Name != "_" {
			t.Errorf("tools.go imports %s: want only blank imports of u-root core commands", p)
			continue
		}
		got = append(got, c)
	}
	want := slices.Clone(rescueCommands)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("tools.go imports %v, rescueCommands are %v", got, want)
	}
}
