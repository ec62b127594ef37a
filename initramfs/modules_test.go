package initramfs

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// fakeKernel writes a small module tree with hard, soft and alias dependencies.
func fakeKernel(t *testing.T) (root, kver string) {
	t.Helper()
	root, kver = t.TempDir(), "1.2.3-test"
	dir := filepath.Join(root, "lib", "modules", kver)
	files := map[string]string{
		"modules.dep": "kernel/net/virtio_net.ko: kernel/virtio/virtio.ko kernel/net/failover.ko\n" +
			"kernel/virtio/virtio.ko:\nkernel/net/failover.ko:\n" +
			"kernel/fs/ext4.ko: kernel/lib/crc16.ko\nkernel/lib/crc16.ko:\n" +
			"kernel/crypto/crc32c_generic.ko:\nkernel/crypto/crc32c-intel.ko:\nkernel/block/nbd.ko:\n" +
			"kernel/misc/packed.ko.xz: kernel/misc/gpacked.ko.gz kernel/misc/zpacked.ko.zst\n" +
			"kernel/misc/gpacked.ko.gz:\nkernel/misc/zpacked.ko.zst:\nkernel/misc/broken.ko.xz:\n",
		"modules.alias": "# Aliases\nalias pci:v00001AF4d00001000sv*sd*bc*sc*i* virtio_pci\n" +
			"alias virtio:d00000001v* virtio_net\nalias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\n" +
			"alias block-major-43-* nbd\n",
		"modules.softdep": "# Soft dependencies\nsoftdep ext4 pre: crypto-crc32c\nsoftdep nbd pre: missing-thing\n",
		"modules.builtin": "kernel/drivers/virtio/virtio_pci.ko\n",
	}
	for rel := range map[string]bool{"kernel/net/virtio_net.ko": true, "kernel/virtio/virtio.ko": true,
		"kernel/net/failover.ko": true, "kernel/fs/ext4.ko": true, "kernel/lib/crc16.ko": true,
		"kernel/crypto/crc32c_generic.ko": true, "kernel/crypto/crc32c-intel.ko": true,
		"kernel/block/nbd.ko": true} {
		files[rel] = "ELF " + rel
	}
	for rel, compress := range map[string]func([]byte) []byte{"kernel/misc/packed.ko.xz": xzBytes,
		"kernel/misc/gpacked.ko.gz": gzipBytes, "kernel/misc/zpacked.ko.zst": zstdBytes} {
		files[rel] = string(compress([]byte("ELF " + plainModule(rel))))
	}
	files["kernel/misc/broken.ko.xz"] = "ELF, not xz"
	for rel, data := range files {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root, kver
}

func TestAddModulesResolvesDependencies(t *testing.T) {
	root, kver := fakeKernel(t)
	a := New()
	if err := a.AddModules(root, kver, "virtio-net", "virtio_pci"); err != nil {
		t.Fatal(err)
	}
	if err := a.AddModules(root, kver, "ext4", "nbd"); err != nil {
		t.Fatal(err)
	}
	want := "kernel/block/nbd.ko kernel/crypto/crc32c-intel.ko kernel/crypto/crc32c_generic.ko " +
		"kernel/fs/ext4.ko kernel/lib/crc16.ko kernel/net/failover.ko kernel/net/virtio_net.ko kernel/virtio/virtio.ko"
	if got := strings.Join(a.Modules(kver), " "); got != want {
		t.Fatalf("modules %q\nwant     %q", got, want)
	}

	_, contents := readArchive(t, build(t, a))
	base := "lib/modules/" + kver + "/"
	if contents[base+"kernel/fs/ext4.ko"] != "ELF kernel/fs/ext4.ko" {
		t.Errorf("ext4.ko contents %q", contents[base+"kernel/fs/ext4.ko"])
	}
	dep := contents[base+"modules.dep"]
	if strings.Contains(dep, "packed") || !strings.Contains(dep, "kernel/fs/ext4.ko: kernel/lib/crc16.ko\n") {
		t.Errorf("modules.dep not filtered to the archive:\n%s", dep)
	}
	alias := contents[base+"modules.alias"]
	if strings.Contains(alias, "virtio_pci") || !strings.Contains(alias, "alias virtio:d00000001v* virtio_net\n") ||
		!strings.Contains(alias, "alias block-major-43-* nbd\n") {
		t.Errorf("modules.alias not filtered to the archive:\n%s", alias)
	}
	if contents[base+"modules.softdep"] != "softdep ext4 pre: crypto-crc32c\nsoftdep nbd pre: missing-thing\n" {
		t.Errorf("modules.softdep %q", contents[base+"modules.softdep"])
	}
	if contents[base+"modules.builtin"] != "kernel/drivers/virtio/virtio_pci.ko\n" {
		t.Errorf("modules.builtin %q", contents[base+"modules.builtin"])
	}
}

func TestAddModulesErrors(t *testing.T) {
	root, kver := fakeKernel(t)
	if err := New().AddModules(root, kver, "no_such_module"); err == nil {
		t.Error("AddModules(no_such_module) succeeded")
	}
	if err := New().AddModules(root, kver, "broken"); err == nil || !strings.Contains(err.Error(), "broken.ko.xz") {
		t.Errorf("a module that does not decompress: %v, want an error naming it", err)
	}
	if err := New().AddModules(root, "9.9.9", "nbd"); err == nil || !strings.Contains(err.Error(), "modules.dep") {
		t.Errorf("missing kernel: %v", err)
	}
}

// TestAddModulesDecompresses checks that compressed modules (xz, gzip, zstd) go into
// the archive decompressed, as .ko, and that modules.dep names them so.
func TestAddModulesDecompresses(t *testing.T) {
	root, kver := fakeKernel(t)
	a := New()
	if err := a.AddModules(root, kver, "packed"); err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/misc/gpacked.ko.gz", "kernel/misc/packed.ko.xz", "kernel/misc/zpacked.ko.zst"}
	if !slices.Equal(a.Modules(kver), want) {
		t.Errorf("modules %q, want %q", a.Modules(kver), want)
	}
	_, contents := readArchive(t, build(t, a))
	base := "lib/modules/" + kver + "/"
	for _, rel := range want {
		plain := plainModule(rel)
		if got := contents[base+plain]; got != "ELF "+plain {
			t.Errorf("%s: %q, want the decompressed module", plain, got)
		}
		if _, ok := contents[base+rel]; ok {
			t.Errorf("%s is in the archive compressed", rel)
		}
	}
	wantDep := "kernel/misc/packed.ko: kernel/misc/gpacked.ko kernel/misc/zpacked.ko\nkernel/misc/gpacked.ko:\nkernel/misc/zpacked.ko:\n"
	if dep := contents[base+"modules.dep"]; dep != wantDep {
		t.Errorf("modules.dep:\n%s\nwant:\n%s", dep, wantDep)
	}
}

func xzBytes(b []byte) []byte {
	var buf bytes.Buffer
	w, err := xz.NewWriter(&buf)
	if err != nil {
		panic(err)
	}
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func gzipBytes(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func zstdBytes(b []byte) []byte {
	w, err := zstd.NewWriter(nil)
	if err != nil {
		panic(err)
	}
	defer w.Close()
	return w.EncodeAll(b, nil)
}

// debianKernel returns the root and version of the Debian kernel `make deps` unpacked,
// or skips.
func debianKernel(t *testing.T) (root, kver string) {
	t.Helper()
	cache := os.Getenv("ISBOOT_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "isboot")
	}
	kv, err := os.ReadFile(filepath.Join(cache, "kernel", "current"))
	if err != nil {
		t.Skip("no unpacked kernel (run make deps):", err)
	}
	kver = strings.TrimSpace(string(kv))
	return filepath.Join(cache, "kernel", kver), kver
}

// TestAddModulesDebianKernel resolves real modules of the kernel `make deps` unpacked.
func TestAddModulesDebianKernel(t *testing.T) {
	root, kver := debianKernel(t)
	a := New()
	if err := a.AddModules(root, kver, "virtio_net", "e1000", "nbd", "ext4"); err != nil {
		t.Fatal(err)
	}
	got := " " + strings.Join(a.Modules(kver), " ") + " "
	for _, m := range []string{"virtio_net.ko", "virtio_ring.ko", "e1000.ko", "nbd.ko", "jbd2.ko", "crc32c_generic.ko"} {
		if !strings.Contains(got, "/"+m+" ") {
			t.Errorf("%s missing from %s", m, got)
		}
	}
}
