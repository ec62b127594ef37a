package debroot

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/internal/rootfind"
)

func TestMirrorFormats(t *testing.T) {
	oneLine := `# comment
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main contrib
deb http://two.example/debian bookworm-updates main
`
	if got := mirrorOneLine([]byte(oneLine), "bookworm"); got != "http://one.example/debian" {
		t.Errorf("one-line: got %q", got)
	}
	if got := mirrorOneLine([]byte(oneLine), "trixie"); got != "" {
		t.Errorf("one-line, absent suite: got %q", got)
	}
	deb822 := `Types: deb-src
URIs: http://src.example/debian
Suites: bookworm

Types: deb
# snapshot: http://old.example/
URIs: http://main.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://sec.example/debian-security
Suites: bookworm-security
`
	if got := mirrorDeb822([]byte(deb822), "bookworm"); got != "http://main.example/debian" {
		t.Errorf("deb822: got %q", got)
	}
	if got := mirrorDeb822([]byte(deb822), "bookworm-security"); got != "http://sec.example/debian-security" {
		t.Errorf("deb822 security: got %q", got)
	}
	disabled := "Enabled: no\nTypes: deb\nURIs: http://off.example/\nSuites: bookworm\n"
	if got := mirrorDeb822([]byte(disabled), "bookworm"); got != "" {
		t.Errorf("disabled stanza used: %q", got)
	}
}

func TestImageKeyFollowsOverlay(t *testing.T) {
	a := imageKey("6.1.0-1-amd64")
	if a != imageKey("6.1.0-1-amd64") {
		t.Fatal("image key not deterministic")
	}
	if a == imageKey("6.1.0-2-amd64") {
		t.Fatal("image key ignores the kernel version")
	}
	if !strings.HasPrefix(a, Version+" ") {
		t.Fatalf("image key %q does not start with the version", a)
	}
}

func TestHookArgs(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "tool")
	os.WriteFile(bin, []byte("#!/bin/sh\necho hi\n"), 0o755)
	args, err := HookArgs(dir, "/t/hook,x", map[string]string{"tool": bin})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(args, " ")
	want := "-fw_cfg name=opt/isboot/hook,file=/t/hook,,x -drive if=none,id=hookfiles,format=raw,readonly=on,file=" +
		filepath.Join(dir, "hook-files.tar") + " -device virtio-blk-pci,drive=hookfiles,serial=isboot-hook"
	if got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	st, err := os.Stat(filepath.Join(dir, "hook-files.tar"))
	if err != nil || st.Size()%512 != 0 {
		t.Fatalf("tar %v, size not a whole number of sectors", err)
	}
	out, err := exec.Command("tar", "-tvf", filepath.Join(dir, "hook-files.tar")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "rwxr-xr-x") || !strings.Contains(string(out), "tool") {
		t.Fatalf("tar listing: %v %s", err, out)
	}
}

// TestBuild builds the image (minutes the first time, nothing after) and
// checks it from the outside: the GPT and ext4 isboot's rootfind sees, a
// clean fsck, systemd and the hook inside, and a free second build.
func TestBuild(t *testing.T) {
	img := ForTest(t)
	t.Logf("image %s (built now: %v, %v)", img.Path, img.Built, img.Took.Round(time.Millisecond))

	f, err := os.Open(img.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	if st.Size() != DiskSize {
		t.Fatalf("image size %d, want %d", st.Size(), DiskSize)
	}
	disk, err := rootfind.Probe(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	if disk.Table != "gpt" || len(disk.Partitions) != 1 {
		t.Fatalf("partition table %q with %d partitions, want gpt with 1", disk.Table, len(disk.Partitions))
	}
	p := disk.Partitions[0]
	if p.Start != PartStart || p.Size != PartSize || !strings.EqualFold(p.PartUUID, PartUUID) || p.PartLabel != Label {
		t.Errorf("partition %+v, want start %d size %d partuuid %s label %s", p, PartStart, PartSize, PartUUID, Label)
	}
	if p.FS.Type != "ext4" || p.FS.UUID != FSUUID || p.FS.Label != Label {
		t.Errorf("filesystem %+v, want ext4 %s %s", p.FS, FSUUID, Label)
	}
	ch, err := disk.Find(cmdline.Root{Kind: cmdline.RootUUID, Value: FSUUID})
	if err != nil {
		t.Fatalf("rootfind by UUID: %v", err)
	}
	t.Logf("rootfind: %+v", ch)

	if out, err := exec.Command("e2fsck", "-fn", FSPath(img.Path)).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck: %v\n%s", err, out)
	}
	// debugfs reads the files back out of the image, no mount needed.
	for _, path := range []string{"/usr/lib/systemd/systemd", "/usr/bin/fio", hookScript,
		unitDir + "/" + hookUnit, "/etc/fstab", "/usr/lib/modules/" + img.KernelVer + "/modules.dep"} {
		out, err := exec.Command("debugfs", "-R", "stat "+path, FSPath(img.Path)).CombinedOutput()
		if err != nil || strings.Contains(string(out), "File not found") {
			t.Errorf("%s not in the image: %v %s", path, err, out)
		}
	}
	out, err := exec.Command("debugfs", "-R", "cat /usr/lib/modules/"+img.KernelVer+"/modules.dep", FSPath(img.Path)).Output()
	if err != nil || !strings.Contains(string(out), "qemu_fw_cfg.ko") {
		t.Errorf("modules.dep lacks qemu_fw_cfg: %v", err)
	}

	again, err := Build(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Built || again.Took > 2*time.Second {
		t.Errorf("second build rebuilt (built %v) or took %v", again.Built, again.Took)
	}
}

func TestCopyToIsSparse(t *testing.T) {
	if testing.Short() {
		t.Skip("writes files")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	f.WriteAt([]byte("head"), 0)
	f.WriteAt([]byte("middle"), 32<<20)
	f.WriteAt([]byte("tail"), 64<<20-4)
	f.Close()

	dst := filepath.Join(dir, "dst")
	if err := (Image{Path: src}).CopyTo(dst); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if string(a) != string(b) {
		t.Fatal("copy differs from the source")
	}
	var st unix.Stat_t
	if err := unix.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 1<<20 {
		t.Fatalf("copy uses %d bytes on disk, want a sparse file", used)
	}
}
