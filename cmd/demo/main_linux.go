// Command demo shows isboot end to end on this machine: it builds the initramfs,
// makes a GPT disk with an ext4 root, serves it with the embedded gotgt target on
// 127.0.0.1, and boots QEMU twice through iPXE's BIOS ROM with a sanhook of that
// target. The console shows iPXE, the kernel, isboot's steps, and the real root
// printing `isboot status`, writing a file and powering off; the second boot shows
// the file survived.
//
//	make demo        (go run ./cmd/demo after make isboot)
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/gostor/gotgt/pkg/config"
	_ "github.com/gostor/gotgt/pkg/port/iscsit" // registers the "iscsi" driver
	"github.com/gostor/gotgt/pkg/scsi"
	_ "github.com/gostor/gotgt/pkg/scsi/backingstore" // registers the "file" store
	"github.com/sirupsen/logrus"

	"github.com/isboot/isboot/internal/testkit/childproc"
	"github.com/isboot/isboot/internal/testkit/rootimg"
)

const (
	iqn     = "iqn.2026-01.org.isboot:demo"
	hostIP  = "10.0.2.2" // the host as QEMU's user network shows it to the guest
	romFile = "/usr/lib/ipxe/qemu/pxe-virtio.rom"
)

// realInit is the demo root's /sbin/init.
const realInit = `#!/bin/sh
echo
echo "=== the real root: $(uname -r), init is PID $$ ==="
mount -o remount,rw /
sleep 1 # the daemon refreshes its counters every second
echo "--- isboot status (/run/isboot/status) ---"
/usr/bin/isboot status
echo "------------------------------------------"
if [ -f /var/isboot-demo ]; then
	echo "demo: /var/isboot-demo survived: $(cat /var/isboot-demo)"
else
	echo "demo: first boot: no /var/isboot-demo yet"
fi
n=$(( $(cat /var/isboot-boots 2>/dev/null || echo 0) + 1 ))
echo $n > /var/isboot-boots
echo "written by boot $n" > /var/isboot-demo
sync
echo "demo: wrote /var/isboot-demo (boot $n), powering off"
poweroff -f
`

func main() {
	build := flag.String("build", "build", "build directory (holds isboot from make isboot)")
	rescue := flag.String("rescue", "uroot", "initramfs rescue shell: uroot or busybox (faster to build the first time)")
	flag.Parse()
	if err := run(*build, *rescue); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

func say(format string, a ...any) { fmt.Printf("\n\033[1mdemo: "+format+"\033[0m\n", a...) }

func run(build, rescue string) error {
	start := time.Now()
	cache := os.Getenv("ISBOOT_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "isboot")
	}
	kverB, err := os.ReadFile(filepath.Join(cache, "kernel", "current"))
	if err != nil {
		return fmt.Errorf("no kernel in %s (run make deps): %w", cache, err)
	}
	kver := strings.TrimSpace(string(kverB))
	kernel := filepath.Join(cache, "kernel", kver, "boot", "vmlinuz-"+kver)
	isboot := filepath.Join(build, "isboot")
	if _, err := os.Stat(isboot); err != nil {
		say("building isboot")
		if err := goCmd("build", "-trimpath", "-ldflags=-s -w", "-o", isboot, "./cmd/isboot"); err != nil {
			return err
		}
	}
	initrd := filepath.Join(build, "isboot-initramfs.img")
	say("building the initramfs (%s)", initrd)
	if err := goCmd("run", "./initramfs/cmd/mkinitramfs", "-isboot", isboot, "-o", initrd, "-rescue", rescue); err != nil {
		return err
	}
	disk := filepath.Join(build, "demo-disk.img")
	say("making %s: GPT, an ESP and an ext4 root with busybox and an init script", disk)
	if err := rootimg.Make(disk, rootimg.Options{Size: 64 << 20, ESP: true, Init: realInit,
		Files: map[string]string{"/usr/bin/isboot": isboot}}); err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	if err := serve(disk, port); err != nil {
		return err
	}
	say("serving %s as %s on 127.0.0.1:%d (embedded gotgt)", disk, iqn, port)
	tftp, err := os.MkdirTemp("", "isboot-demo-tftp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tftp)
	script := fmt.Sprintf("#!ipxe\ndhcp\nsanhook iscsi:%s::%d:1:%s\nkernel vmlinuz console=ttyS0 quiet panic=-1\ninitrd initrd.img\nboot\n", hostIP, port, iqn)
	for name, src := range map[string]string{"vmlinuz": kernel, "initrd.img": initrd} {
		if err := copyFile(src, filepath.Join(tftp, name)); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(tftp, "boot.ipxe"), []byte(script), 0o644); err != nil {
		return err
	}
	var outs []string
	for boot := 1; boot <= 2; boot++ {
		say("boot %d: QEMU (TCG) → SeaBIOS → iPXE (dhcp, sanhook) → kernel → isboot → real root", boot)
		out, err := qemu(tftp)
		if err != nil {
			return fmt.Errorf("boot %d: %w", boot, err)
		}
		outs = append(outs, out)
	}
	switch {
	case !strings.Contains(outs[0], "demo: wrote /var/isboot-demo (boot 1)"):
		return errors.New("boot 1 did not reach the real root and write its file")
	case !strings.Contains(outs[1], "demo: /var/isboot-demo survived: written by boot 1"):
		return errors.New("boot 2 did not find the file boot 1 wrote")
	}
	say("done in %.0f s: the file written in boot 1 survived into boot 2", time.Since(start).Seconds())
	return nil
}

func goCmd(args ...string) error {
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(gobin, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// serve starts gotgt in this process; it runs until the demo exits.
func serve(disk string, port int) error {
	logrus.SetOutput(io.Discard)
	cfg := &config.Config{
		Storages:     []config.BackendStorage{{DeviceID: 1000, Path: "file:" + disk, Online: true, BlockShift: 9}},
		ISCSIPortals: []config.ISCSIPortalInfo{{ID: 0, Portal: fmt.Sprintf("127.0.0.1:%d", port)}},
		ISCSITargets: map[string]config.ISCSITarget{
			iqn: {TPGTs: map[string][]uint64{"1": {0}}, LUNs: map[string]uint64{"1": 1000}},
		},
	}
	if err := scsi.InitSCSILUMap(cfg); err != nil {
		return fmt.Errorf("gotgt: %w", err)
	}
	driver, err := scsi.NewTargetDriver("iscsi", scsi.NewSCSITargetService())
	if err != nil {
		return fmt.Errorf("gotgt: %w", err)
	}
	if err := driver.NewTarget(iqn, cfg); err != nil {
		return fmt.Errorf("gotgt: %w", err)
	}
	go driver.Run(port)
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			return nil
		}
	}
	return fmt.Errorf("gotgt: not listening on port %d", port)
}

// qemu boots once with the console on this terminal and returns what it printed.
func qemu(tftp string) (string, error) {
	if _, err := os.Stat(romFile); err != nil {
		return "", fmt.Errorf("iPXE ROM: %w (run make deps)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-accel", "tcg", "-machine", "pc,graphics=off", "-m", "512", "-nodefaults", "-no-user-config",
		"-display", "none", "-no-reboot", "-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
		"-netdev", "user,id=n0,tftp="+tftp+",bootfile=boot.ipxe",
		// Debian's virtio ROM carries the modern device id, which SeaBIOS matches.
		"-device", "virtio-net-pci,netdev=n0,disable-legacy=on,bootindex=1,romfile="+romFile)
	var out bytes.Buffer
	cmd.Stdin = os.Stdin
	cmd.Stdout = io.MultiWriter(os.Stdout, &out)
	cmd.Stderr = os.Stderr
	// Dies with the demo, and only then (see internal/testkit/childproc).
	child, err := childproc.Start(cmd)
	if err == nil {
		<-child.Done()
		err = child.Err()
	}
	if ctx.Err() != nil {
		return out.String(), errors.New("QEMU did not power off within 4 minutes")
	}
	return out.String(), err
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}
