package main

import (
	"bytes"
	"compress/gzip"
	"go/parser"
	"go/token"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/isboot/isboot/initramfs"
)

func cacheDir() string {
	if cache := os.Getenv("ISBOOT_CACHE"); cache != "" {
		return cache
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "isboot")
}

func kernel(t *testing.T) (dir, kver string) {
	t.Helper()
	cache := cacheDir()
	b, err := os.ReadFile(filepath.Join(cache, "kernel", "current"))
	if err != nil {
		t.Skipf("no unpacked kernel (make deps): %v", err)
	}
	kver = strings.TrimSpace(string(b))
	return filepath.Join(cache, "kernel", kver), kver
}

func image(t *testing.T, o *options) []byte {
	t.Helper()
	a, _, err := build(o)
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
	fw := t.TempDir()          // a firmware directory with one of tg3's files
	if err := os.MkdirAll(filepath.Join(fw, "tigon"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fw, "tigon/tg3.bin"), []byte("tg3 firmware"), 0o644); err != nil {
		t.Fatal(err)
	}
	o := &options{isboot: self, kernelDir: dir, kver: kver, modules: defaultModules, firmwareDir: fw, rescue: "busybox"}
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
		"kernel/drivers/net/ethernet/intel/e1000/e1000.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/crypto/crc32c_generic.ko",
		"kernel/drivers/net/ethernet/mellanox/mlx5/core/mlx5_core.ko", "kernel/drivers/net/ethernet/intel/ice/ice.ko",
		"kernel/drivers/net/ethernet/amazon/ena/ena.ko", "kernel/drivers/net/vmxnet3/vmxnet3.ko",
		"kernel/drivers/net/hyperv/hv_netvsc.ko", "kernel/drivers/hv/hv_vmbus.ko",
		"kernel/drivers/net/ethernet/qlogic/qede/qede.ko", "kernel/drivers/net/ethernet/qlogic/qed/qed.ko",
		"kernel/drivers/net/ethernet/emulex/benet/be2net.ko", "lib/firmware/tigon/tg3.bin\x00", "tg3 firmware"} {
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
		if _, _, err := build(o); err == nil {
			t.Errorf("build(%+v): no error", o)
		}
	}
}

// TestDefaultImageWithinBudget builds what make initramfs builds (isboot, the default
// modules of the cached kernel with the host's firmware, u-root's rescue shell, its
// default compression) and fails if the image is over the budget.
func TestDefaultImageWithinBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("builds isboot and the full image")
	}
	dir, kver := kernel(t)
	isboot := filepath.Join(t.TempDir(), "isboot")
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command:", err)
	}
	cmd := exec.Command(gobin, "build", "-trimpath", "-ldflags=-s -w", "-o", isboot, "github.com/isboot/isboot/cmd/isboot")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build isboot: %v\n%s", err, out)
	}
	o := &options{isboot: isboot, kernelDir: dir, kver: kver, modules: defaultModules,
		firmwareDir: "/lib/firmware", rescue: "uroot", bbCache: filepath.Join(cacheDir(), "uroot-bb")}
	a, fw, err := build(o)
	if err != nil {
		t.Fatal(err)
	}
	a.Compression = defaultCompression
	var buf bytes.Buffer
	if _, err := a.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	size := int64(buf.Len())
	t.Logf("image: %d bytes (%.1f MiB of %d MiB), %d modules\n%s", size, float64(size)/(1<<20), sizeBudget>>20,
		len(a.Modules(kver)), firmwareSummary(fw, o.firmwareDir))
	if w := budgetWarning(size); w != "" {
		t.Error(w)
	}
}

func TestBudgetWarning(t *testing.T) {
	if w := budgetWarning(sizeBudget); w != "" {
		t.Errorf("at the budget: %q", w)
	}
	want := "mkinitramfs: warning: the image is 16.0 MiB, over the 16 MiB budget by 1 bytes (docs/fleet.md)"
	if w := budgetWarning(sizeBudget + 1); w != want {
		t.Errorf("over the budget: %q, want %q", w, want)
	}
}

func TestFirmwareSummary(t *testing.T) {
	fw := []initramfs.Firmware{
		{Module: "ice", Name: "intel/ice/ddp/ice.pkg"},
		{Module: "qed", Name: "qed/x.bin", Files: []string{"lib/firmware/qed/x.bin.xz"}},
		{Module: "tg3", Name: "tigon/tg3.bin", Files: []string{"lib/firmware/tigon/tg3.bin"}},
		{Module: "tg3", Name: "tigon/tg3_tso.bin"},
		{Module: "tg3", Name: "tigon/tg3_tso5.bin"},
	}
	want := "firmware: 2 of 5 declared files found in /fw: lib/firmware/qed/x.bin.xz lib/firmware/tigon/tg3.bin\n" +
		"firmware missing (install the firmware packages on the build host to carry it):\n" +
		"  ice: intel/ice/ddp/ice.pkg\n" +
		"  tg3: tigon/tg3_tso.bin tigon/tg3_tso5.bin\n"
	if got := firmwareSummary(fw, "/fw"); got != want {
		t.Errorf("summary:\n%s\nwant:\n%s", got, want)
	}
	if got := firmwareSummary(nil, "/fw"); got != "firmware: 0 of 0 declared files found in /fw\n" {
		t.Errorf("no firmware: %q", got)
	}
	if got := firmwareSummary(fw, ""); got != "firmware: none carried (-firmware-dir \"\"); the modules declare 5 files\n" {
		t.Errorf("no directory: %q", got)
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
