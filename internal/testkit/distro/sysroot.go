// Package distro proves isboot inside a distribution's own initramfs: a Debian 12
// root with systemd, where apt in a chroot installs linux-image-amd64, the initramfs
// generator (initramfs-tools or dracut) and the .deb `make deb` builds, boots from
// an iSCSI LUN with its own kernel and its own generated initramfs, the iBFT injected
// as an ACPI table. It is test-only: nothing outside internal/testkit imports it.
//
// A sysroot is built in two cached stages under $ISBOOT_CACHE/distro/<flavour>/,
// each keyed by the content that makes it:
//
//  1. base: debroot's configured tree, copied, plus apt-get install of the kernel
//     and the generator (minutes; only when debroot or the package list changes);
//  2. image: the base copied again, the .deb installed with apt (whose trigger
//     regenerates the initramfs), the kernel and initramfs taken out, and the GPT
//     disk made (about a minute; whenever the .deb's bytes change). The tree of this
//     stage is deleted once its disk exists, and older images of the flavour go.
package distro

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/internal/testkit/debroot"
)

// Flavour is one initramfs generator and what apt installs for it.
type Flavour struct {
	Name     string   // "initramfs-tools", "dracut"
	Packages []string // apt-get install (--no-install-recommends) on the debroot tree
	// Lister prints an initramfs's file list (to check isboot is in it).
	Lister []string
}

var (
	// InitramfsTools is Debian's default generator, with its recommended busybox and zstd.
	InitramfsTools = Flavour{Name: "initramfs-tools", Packages: []string{"linux-image-amd64", "initramfs-tools", "busybox", "zstd"},
		Lister: []string{"lsinitramfs"}}
	// Dracut replaces initramfs-tools (the packages conflict); with systemd in the
	// tree, its images run systemd in the initramfs.
	Dracut = Flavour{Name: "dracut", Packages: []string{"linux-image-amd64", "dracut", "pigz"},
		Lister: []string{"lsinitrd"}}
)

// baseVersion keys stage 1 beyond its inputs: change it to rebuild every base.
const baseVersion = "distro-base-1"

// excluded paths dpkg does not unpack in the sysroots: drivers no VM has, and docs.
var excluded = []string{
	"/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*",
	"/usr/lib/modules/*/kernel/drivers/gpu/*", "/usr/lib/modules/*/kernel/sound/*",
	"/usr/lib/modules/*/kernel/drivers/media/*", "/usr/lib/modules/*/kernel/drivers/net/wireless/*",
	"/usr/lib/modules/*/kernel/drivers/infiniband/*", "/usr/lib/modules/*/kernel/drivers/staging/*",
	"/usr/lib/modules/*/kernel/drivers/iio/*", "/usr/lib/modules/*/kernel/net/bluetooth/*",
	"/usr/lib/modules/*/kernel/drivers/bluetooth/*", "/usr/lib/modules/*/kernel/drivers/isdn/*",
}

// Sysroot is a built image with its own kernel and initramfs.
type Sysroot struct {
	Flavour   Flavour
	Disk      string // sparse GPT disk (read-only: tests copy it)
	Kernel    string // /boot/vmlinuz-<ver> of the sysroot
	Initrd    string // /boot/initrd.img-<ver> the generator made, isboot inside
	KernelVer string
	Contents  string // the initramfs's file list
	Built     bool   // this call built something
	Took      time.Duration
}

// Options tunes Build.
type Options struct {
	CacheDir string // default $ISBOOT_CACHE/distro
	Logf     func(string, ...any)
}

// Build returns the sysroot of fl with deb installed, building what the cache lacks.
func Build(ctx context.Context, base debroot.Image, fl Flavour, deb string, opts Options) (Sysroot, error) {
	start := time.Now()
	if opts.CacheDir == "" {
		opts.CacheDir = filepath.Join(debroot.CacheRoot(), "distro")
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	dir := filepath.Join(opts.CacheDir, fl.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Sysroot{}, fmt.Errorf("distro: %w", err)
	}
	unlock, err := debroot.Lock(filepath.Join(dir, "lock"))
	if err != nil {
		return Sysroot{}, err
	}
	defer unlock()
	sr := Sysroot{Flavour: fl}

	baseKey, err := keyOf(baseVersion, fileKey(filepath.Join(base.Dir, "image.stamp")), fl.Packages, excluded)
	if err != nil {
		return Sysroot{}, err
	}
	baseTree := filepath.Join(dir, "base-"+baseKey)
	if !stamped(baseTree+".stamp", baseKey) {
		opts.Logf("distro: %s base: debroot tree + apt-get install %s", fl.Name, strings.Join(fl.Packages, " "))
		if err := buildBase(ctx, base.Tree(), baseTree, fl, opts.Logf); err != nil {
			return Sysroot{}, err
		}
		if err := os.WriteFile(baseTree+".stamp", []byte(baseKey), 0o644); err != nil {
			return Sysroot{}, fmt.Errorf("distro: %w", err)
		}
		sr.Built = true
	}
	debSum, err := fileSum(deb)
	if err != nil {
		return Sysroot{}, err
	}
	imgKey, err := keyOf(baseKey, debSum)
	if err != nil {
		return Sysroot{}, err
	}
	imgDir := filepath.Join(dir, "image-"+imgKey)
	if !stamped(filepath.Join(imgDir, "stamp"), imgKey) {
		opts.Logf("distro: %s image: apt install ./%s", fl.Name, filepath.Base(deb))
		if err := buildImage(ctx, baseTree, imgDir, fl, deb, opts.Logf); err != nil {
			return Sysroot{}, err
		}
		if err := os.WriteFile(filepath.Join(imgDir, "stamp"), []byte(imgKey), 0o644); err != nil {
			return Sysroot{}, fmt.Errorf("distro: %w", err)
		}
		sr.Built = true
	}
	prune(dir, filepath.Base(baseTree), filepath.Base(imgDir))
	kver, err := os.ReadFile(filepath.Join(imgDir, "kver"))
	if err != nil {
		return Sysroot{}, fmt.Errorf("distro: %w", err)
	}
	contents, _ := os.ReadFile(filepath.Join(imgDir, "initrd.list"))
	sr.KernelVer = strings.TrimSpace(string(kver))
	sr.Disk = filepath.Join(imgDir, "root.img")
	sr.Kernel = filepath.Join(imgDir, "vmlinuz")
	sr.Initrd = filepath.Join(imgDir, "initrd.img")
	sr.Contents = string(contents)
	sr.Took = time.Since(start)
	return sr, nil
}

// buildBase copies debroot's tree and installs the kernel and the generator in it.
func buildBase(ctx context.Context, from, tree string, fl Flavour, logf func(string, ...any)) error {
	partial := tree + ".partial"
	for _, p := range []string{partial, tree, tree + ".stamp"} {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("distro: %w", err)
		}
	}
	logPath := tree + ".log"
	os.Remove(logPath)
	if err := run(ctx, logPath, "cp", "-a", "--reflink=auto", from, partial); err != nil {
		return err
	}
	// debroot put a few modules of the host's kernel there; the package brings its own.
	if err := os.RemoveAll(filepath.Join(partial, "usr/lib/modules")); err != nil {
		return fmt.Errorf("distro: %w", err)
	}
	var dpkgCfg strings.Builder
	for _, p := range excluded {
		fmt.Fprintf(&dpkgCfg, "path-exclude=%s\n", p)
	}
	if err := os.WriteFile(filepath.Join(partial, "etc/dpkg/dpkg.cfg.d/isboot-test-excludes"), []byte(dpkgCfg.String()), 0o644); err != nil {
		return fmt.Errorf("distro: %w", err)
	}
	err := inChroot(ctx, partial, logPath, func(c chroot) error {
		if err := c.run("apt-get", "update", "-qq"); err != nil {
			return err
		}
		args := append([]string{"install", "-y", "-q", "--no-install-recommends"}, fl.Packages...)
		if err := c.run(append([]string{"apt-get"}, args...)...); err != nil {
			return err
		}
		return c.run("apt-get", "clean")
	})
	if err != nil {
		return err
	}
	logf("distro: %s base ready (log %s)", fl.Name, logPath)
	return os.Rename(partial, tree)
}

// buildImage installs deb on a copy of the base, takes the kernel and the initramfs
// out and makes the disk.
func buildImage(ctx context.Context, baseTree, imgDir string, fl Flavour, deb string, logf func(string, ...any)) error {
	if err := os.RemoveAll(imgDir); err != nil {
		return fmt.Errorf("distro: %w", err)
	}
	if err := os.MkdirAll(imgDir, 0o755); err != nil {
		return fmt.Errorf("distro: %w", err)
	}
	tree := filepath.Join(imgDir, "tree")
	logPath := filepath.Join(imgDir, "build.log")
	defer removeTree(tree) // the disk holds it
	if err := run(ctx, logPath, "cp", "-a", "--reflink=auto", baseTree, tree); err != nil {
		return err
	}
	inTree := "/tmp/" + filepath.Base(deb)
	if err := copyFile(deb, filepath.Join(tree, inTree)); err != nil {
		return err
	}
	err := inChroot(ctx, tree, logPath, func(c chroot) error {
		// As a user would: apt installs the local file; its trigger makes the initramfs.
		if err := c.run("apt-get", "install", "-y", "-q", inTree); err != nil {
			return err
		}
		out, err := c.output(append(fl.Lister, "/boot/initrd.img-"+kernelVer(tree))...)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(imgDir, "initrd.list"), out, 0o644)
	})
	if err != nil {
		return err
	}
	os.Remove(filepath.Join(tree, inTree))
	kver := kernelVer(tree)
	if kver == "" {
		return fmt.Errorf("distro: no kernel in %s/boot", tree)
	}
	list, _ := os.ReadFile(filepath.Join(imgDir, "initrd.list"))
	if !strings.Contains(string(list), "usr/sbin/isboot") {
		return fmt.Errorf("distro: %s made an initramfs without usr/sbin/isboot (list in %s)", fl.Name, filepath.Join(imgDir, "initrd.list"))
	}
	for src, dst := range map[string]string{"boot/vmlinuz-" + kver: "vmlinuz", "boot/initrd.img-" + kver: "initrd.img"} {
		if err := copyFile(filepath.Join(tree, src), filepath.Join(imgDir, dst)); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(imgDir, "kver"), []byte(kver+"\n"), 0o644); err != nil {
		return fmt.Errorf("distro: %w", err)
	}
	logf("distro: %s: kernel %s, initramfs with isboot; making the disk", fl.Name, kver)
	return debroot.MakeDisk(ctx, tree, filepath.Join(imgDir, "root.img"), logf)
}

// kernelVer is the version of the (one) kernel in tree/boot.
func kernelVer(tree string) string {
	m, _ := filepath.Glob(filepath.Join(tree, "boot", "vmlinuz-*"))
	sort.Strings(m)
	if len(m) == 0 {
		return ""
	}
	return strings.TrimPrefix(filepath.Base(m[len(m)-1]), "vmlinuz-")
}

// chroot runs commands inside a tree with /proc, /sys and /dev mounted and the
// host's resolver, so apt reaches the archive the way the host's apt does.
type chroot struct {
	ctx     context.Context
	tree    string
	logPath string
}

func (c chroot) cmd(args ...string) *exec.Cmd {
	cmd := exec.CommandContext(c.ctx, "chroot", append([]string{c.tree}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C", "HOME=/root"}
	return cmd
}

func (c chroot) run(args ...string) error {
	logf, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("distro: %w", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "+ chroot %s %s\n", c.tree, strings.Join(args, " "))
	cmd := c.cmd(args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("distro: chroot %s: %v (log %s):\n%s", strings.Join(args, " "), err, c.logPath, tail(c.logPath, 12))
	}
	return nil
}

func (c chroot) output(args ...string) ([]byte, error) {
	out, err := c.cmd(args...).Output()
	if err != nil {
		return nil, fmt.Errorf("distro: chroot %s: %v", strings.Join(args, " "), err)
	}
	return out, nil
}

// inChroot mounts what apt, dpkg and the generators need, runs fn and unmounts,
// whatever fn did.
func inChroot(ctx context.Context, tree, logPath string, fn func(chroot) error) (err error) {
	resolv := filepath.Join(tree, "etc/resolv.conf")
	saved, savedErr := os.ReadFile(resolv)
	os.Remove(resolv)
	if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		os.WriteFile(resolv, b, 0o644)
	}
	defer func() {
		os.Remove(resolv)
		if savedErr == nil {
			os.WriteFile(resolv, saved, 0o644)
		}
	}()
	mounts := []struct {
		src, dst, fstype string
		flags            uintptr
	}{
		{"proc", "proc", "proc", 0},
		{"sysfs", "sys", "sysfs", unix.MS_RDONLY},
		{"/dev", "dev", "", unix.MS_BIND | unix.MS_REC},
	}
	var done []string
	defer func() {
		for i := len(done) - 1; i >= 0; i-- {
			if e := unix.Unmount(done[i], unix.MNT_DETACH); e != nil && err == nil {
				err = fmt.Errorf("distro: umount %s: %w", done[i], e)
			}
		}
	}()
	for _, m := range mounts {
		dst := filepath.Join(tree, m.dst)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fmt.Errorf("distro: %w", err)
		}
		if err := unix.Mount(m.src, dst, m.fstype, m.flags, ""); err != nil {
			return fmt.Errorf("distro: mount %s on %s: %w", m.src, dst, err)
		}
		done = append(done, dst)
		if m.flags&unix.MS_BIND != 0 {
			// Never let a mount event in the chroot reach the host's /dev.
			if err := unix.Mount("", dst, "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
				return fmt.Errorf("distro: make %s a slave: %w", dst, err)
			}
		}
	}
	return fn(chroot{ctx: ctx, tree: tree, logPath: logPath})
}

// prune removes the flavour's stale bases and images (other keys), which are big.
func prune(dir string, keep ...string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		n := e.Name()
		if n == "lock" {
			continue
		}
		stem := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, ".stamp"), ".log"), ".partial")
		kept := false
		for _, k := range keep {
			kept = kept || stem == k
		}
		if !kept {
			removeTree(filepath.Join(dir, n))
		}
	}
}

func keyOf(parts ...any) (string, error) {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%q\x00", p)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func fileKey(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func fileSum(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("distro: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("distro: %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func stamped(path, want string) bool {
	b, err := os.ReadFile(path)
	return err == nil && string(b) == want
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("distro: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("distro: %w", err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		return fmt.Errorf("distro: %w", err)
	}
	return nil
}

func run(ctx context.Context, logPath, name string, args ...string) error {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("distro: %w", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "+ %s %s\n", name, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("distro: %s: %v (log %s):\n%s", name, err, logPath, tail(logPath, 8))
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

// removeTree deletes a tree unless something is still mounted in it: through a
// leftover bind mount of /dev, RemoveAll would delete the host's device nodes.
func removeTree(path string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (f[4] == path || strings.HasPrefix(f[4], path+"/")) {
			return
		}
	}
	os.RemoveAll(path)
}
