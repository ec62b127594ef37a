// Package debroot builds, once, a Debian bookworm root filesystem with systemd
// on a GPT disk image, for the VM tests that boot a real distribution through
// isboot. The image lives in $ISBOOT_CACHE/debroot/<Version>/ and is never
// committed; stamp files make a second Build cost nothing.
//
// The root runs a test hook once multi-user.target is reached: the unit
// isboot-test-hook.service prints markers on /dev/ttyS0 and runs the script a
// test hands in over QEMU's fw_cfg (see Hook*), so one image serves every
// test without a rebuild.
//
// Build stages, each with its own stamp:
//
//  1. tree: debootstrap --variant=minbase with the packages the tests need,
//     from the mirror apt is configured with (read at run time);
//  2. image: the test configuration and a few kernel modules written into the
//     tree, then a sparse GPT disk whose one partition holds an ext4 made by
//     mke2fs -d straight from the tree (no loop mounts).
package debroot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/testenv"
	"golang.org/x/sys/unix"
)

// Version keys the cache: change it to rebuild everything (tree and image).
const Version = "bookworm-1"

// Suite is the Debian release debootstrap installs.
const Suite = "bookworm"

// Packages are installed on top of minbase: systemd as init, fio and our own
// verifier's needs, and the tools fsck and the hook use.
var Packages = []string{"systemd-sysv", "fio", "udev", "kmod", "e2fsprogs", "util-linux", "procps"}

// Fixed identities, so tests can say root=UUID=... and every build is alike.
const (
	DiskGUID = "6b1e5f2a-4c1d-4e55-9a57-15b007000001"
	PartUUID = "6b1e5f2a-4c1d-4e55-9a57-15b007000002"
	FSUUID   = "6b1e5f2a-4c1d-4e55-9a57-15b007000003"
	Label    = "isbroot"
)

// Disk geometry: one partition from 1 MiB to 1 MiB before the end, leaving
// room for the backup GPT.
const (
	DiskSize  = 2 << 30
	PartStart = 1 << 20
	PartSize  = DiskSize - 2*PartStart
)

// Options tunes a build. The zero value builds into $ISBOOT_CACHE/debroot
// with the modules of the kernel `make deps` unpacked.
type Options struct {
	CacheDir   string // default $ISBOOT_CACHE/debroot
	KernelRoot string // holds lib/modules/<KernelVer>; default $ISBOOT_CACHE/kernel/<current>
	KernelVer  string
	Mirror     string               // default: from apt's sources
	Logf       func(string, ...any) // progress; default silent
}

// Image is a built disk image.
type Image struct {
	Path      string // sparse GPT disk image (read-only: tests copy it)
	Dir       string // the cache directory of this Version
	KernelVer string // modules in the image are for this kernel
	Built     bool   // this call built something (false: all from cache)
	Took      time.Duration
}

// CacheRoot is $ISBOOT_CACHE (default ~/.cache/isboot).
func CacheRoot() string {
	if d := os.Getenv("ISBOOT_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		home = "/root"
	}
	return filepath.Join(home, ".cache", "isboot")
}

func (o *Options) defaults() error {
	if o.CacheDir == "" {
		o.CacheDir = filepath.Join(CacheRoot(), "debroot")
	}
	if o.KernelRoot == "" || o.KernelVer == "" {
		base := filepath.Join(CacheRoot(), "kernel")
		b, err := os.ReadFile(filepath.Join(base, "current"))
		if err != nil {
			return fmt.Errorf("debroot: no kernel in the cache (make deps): %w", err)
		}
		o.KernelVer = strings.TrimSpace(string(b))
		o.KernelRoot = filepath.Join(base, o.KernelVer)
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return nil
}

// Build makes sure the image exists and is current, building what is missing.
// Concurrent callers (test binaries of several packages) serialise on a lock
// file, so only one builds.
func Build(ctx context.Context, opts Options) (Image, error) {
	start := time.Now()
	if err := opts.defaults(); err != nil {
		return Image{}, err
	}
	dir := filepath.Join(opts.CacheDir, Version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Image{}, fmt.Errorf("debroot: %w", err)
	}
	unlock, err := lock(filepath.Join(dir, "lock"))
	if err != nil {
		return Image{}, err
	}
	defer unlock()

	img := Image{Path: filepath.Join(dir, "root.img"), Dir: dir, KernelVer: opts.KernelVer}
	tree := filepath.Join(dir, "tree")
	if !stamped(filepath.Join(dir, "tree.stamp"), Version) {
		if err := bootstrap(ctx, opts, dir, tree); err != nil {
			return Image{}, err
		}
		img.Built = true
	}
	key := imageKey(opts.KernelVer)
	if !stamped(filepath.Join(dir, "image.stamp"), key) {
		os.Remove(filepath.Join(dir, "image.stamp"))
		if err := configure(ctx, opts, tree); err != nil {
			return Image{}, err
		}
		if err := makeDisk(ctx, opts, tree, img.Path); err != nil {
			return Image{}, err
		}
		if err := os.WriteFile(filepath.Join(dir, "image.stamp"), []byte(key), 0o644); err != nil {
			return Image{}, fmt.Errorf("debroot: %w", err)
		}
		img.Built = true
	}
	img.Took = time.Since(start)
	return img, nil
}

// imageKey changes whenever what configure writes changes, so an edit to the
// hook rebuilds the image (seconds) but not the tree (minutes).
func imageKey(kver string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%d\x00%s\x00%s\x00%s\x00", Version, kver, DiskSize, DiskGUID, PartUUID, FSUUID)
	for _, f := range overlayFiles() {
		fmt.Fprintf(h, "%s\x00%o\x00%s\x00", f.path, f.mode, f.data)
	}
	fmt.Fprintf(h, "%q %q %q", modules, masked, pruned)
	return Version + " " + hex.EncodeToString(h.Sum(nil))[:16]
}

func stamped(path, want string) bool {
	b, err := os.ReadFile(path)
	return err == nil && string(b) == want
}

// bootstrap runs debootstrap into a scratch directory and renames it into
// place, so an interrupted run never leaves a half tree behind a stamp.
func bootstrap(ctx context.Context, opts Options, dir, tree string) error {
	mirror := opts.Mirror
	if mirror == "" {
		var err error
		if mirror, err = AptMirror(Suite); err != nil {
			return err
		}
	}
	partial := tree + ".partial"
	for _, p := range []string{partial, tree} {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("debroot: %w", err)
		}
	}
	opts.Logf("debroot: debootstrap %s (minbase + %s)", Suite, strings.Join(Packages, ","))
	logPath := filepath.Join(dir, "debootstrap.log")
	if err := run(ctx, logPath, "debootstrap", "--variant=minbase",
		"--include="+strings.Join(Packages, ","), Suite, partial, mirror); err != nil {
		return err
	}
	if err := os.Rename(partial, tree); err != nil {
		return fmt.Errorf("debroot: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, "tree.stamp"), []byte(Version), 0o644)
}

// makeDisk lays out the GPT with sgdisk and makes the filesystem inside the
// partition with mke2fs's offset option: the tree goes in with -d, ownership
// and modes kept, no mount needed.
func makeDisk(ctx context.Context, opts Options, tree, path string) error {
	tmp := path + ".partial"
	os.Remove(tmp)
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("debroot: %w", err)
	}
	err = f.Truncate(DiskSize)
	f.Close()
	if err != nil {
		return fmt.Errorf("debroot: %w", err)
	}
	logPath := filepath.Join(filepath.Dir(path), "image.log")
	os.Remove(logPath)
	opts.Logf("debroot: GPT disk and ext4 from the tree")
	if err := run(ctx, logPath, "sgdisk", "--clear", "--disk-guid="+DiskGUID,
		fmt.Sprintf("--new=1:%d:%d", PartStart/512, (PartStart+PartSize)/512-1),
		"--typecode=1:8300", "--change-name=1:"+Label, "--partition-guid=1:"+PartUUID, tmp); err != nil {
		return err
	}
	if err := run(ctx, logPath, "mke2fs", "-q", "-F", "-t", "ext4", "-L", Label, "-U", FSUUID,
		"-E", fmt.Sprintf("offset=%d,nodiscard,root_owner=0:0", PartStart),
		"-d", tree, tmp, fmt.Sprintf("%dk", PartSize>>10)); err != nil {
		return err
	}
	if err := run(ctx, logPath, "e2fsck", "-fn", FSPath(tmp)); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// FSPath names the filesystem inside a disk image the way e2fsprogs' tools
// (e2fsck, debugfs, dumpe2fs) accept it: path?offset=N.
func FSPath(disk string) string { return fmt.Sprintf("%s?offset=%d", disk, PartStart) }

// run runs a command with its output appended to logPath; an error carries
// the log's last lines.
func run(ctx context.Context, logPath, name string, args ...string) error {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("debroot: %w", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "+ %s %s\n", name, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("debroot: %s: %v (log %s):\n%s", name, err, logPath, tail(logPath, 8))
	}
	return nil
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// lock takes an exclusive flock on path, waiting for another builder.
func lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("debroot: lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("debroot: lock %s: %w", path, err)
	}
	return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

// ForTest returns the image for a test, building it if needed. It skips under
// -short, without root, or when debootstrap/sgdisk/mke2fs are missing; a
// build failure fails the test.
func ForTest(t testing.TB) Image {
	t.Helper()
	testenv.Require(t, "debroot", "debootstrap", "sgdisk", "mke2fs", "e2fsck", "depmod", "modprobe")
	img, err := Build(context.Background(), Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	if img.Built {
		t.Logf("debroot: built %s in %v", img.Path, img.Took.Round(time.Second))
	}
	return img
}
