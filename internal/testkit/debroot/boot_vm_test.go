package debroot

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/initramfs"
	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// localInit mounts the image's root from a virtio disk and hands over to
// systemd: the control case, without isboot, that shows the image itself boots.
const localInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in crc32c_generic virtio_pci virtio_blk ext4; do modprobe $m; done
# The root is the virtio disk with a partition (the hook's tar disk has none).
for i in 1 2 3 4 5 6 7 8 9 10; do set -- /dev/vd?1; [ -b "$1" ] && break; sleep 0.2; done
mount -o ro "$1" /newroot || exec sh
exec switch_root /newroot /sbin/init
`

func localInitrd(t *testing.T, k vm.Kernel) string {
	t.Helper()
	a := initramfs.New()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	bb := testenv.LookPath(t, "VM test", "busybox")
	must(a.AddFile("bin/busybox", bb, 0o755))
	must(a.AddBytes("init", []byte(localInit), 0o755))
	must(a.AddCharDev("dev/console", 0o600, 5, 1))
	must(a.AddModules(k.Root, k.Version, "crc32c_generic", "virtio_pci", "virtio_blk", "ext4"))
	path := filepath.Join(t.TempDir(), "local.cpio.gz")
	must(a.WriteFile(path))
	return path
}

// TestImageBootsLocally boots the image from a local virtio disk to
// multi-user.target, runs a hook handed in over fw_cfg, powers off through
// systemd and checks the filesystem is clean afterwards.
func TestImageBootsLocally(t *testing.T) {
	vm.Require(t)
	img := ForTest(t)
	k := vm.DebianKernel(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := img.CopyTo(disk); err != nil {
		t.Fatal(err)
	}
	hook := filepath.Join(dir, "hook")
	os.WriteFile(hook, []byte("echo HOOK-RAN $(cat /etc/hostname) $(cat marker)\nsystemctl poweroff\n"), 0o644)
	marker := filepath.Join(dir, "marker")
	os.WriteFile(marker, []byte("from-fw-cfg\n"), 0o644)

	hookArgs, err := HookArgs(dir, hook, map[string]string{"marker": marker})
	if err != nil {
		t.Fatal(err)
	}
	v := vm.Start(t, vm.Config{
		Firmware:  vm.Direct,
		Kernel:    k.Image,
		Initrd:    localInitrd(t, k),
		Cmdline:   "console=ttyS0 ro net.ifnames=0",
		ExtraArgs: append([]string{"-drive", "file=" + disk + ",format=raw,if=virtio"}, hookArgs...),
	})
	ctx := context.Background()
	m, err := v.WaitFor(ctx, 180*time.Second, MarkerReady+` (\S+)`)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("multi-user.target after %v (state %s)", v.Elapsed().Round(100*time.Millisecond), m[1])
	if _, err := v.WaitFor(ctx, 30*time.Second, "HOOK-RAN isbguest from-fw-cfg"); err != nil {
		t.Fatal(err)
	}
	if err := v.Wait(ctx, 120*time.Second); err != nil && !strings.Contains(err.Error(), "exit status") {
		t.Fatalf("poweroff: %v", err)
	}
	t.Logf("powered off after %v", v.Elapsed().Round(100*time.Millisecond))
	con := v.Console()
	if !strings.Contains(con, MarkerFsck+Label+": clean") {
		t.Errorf("systemd-fsck-root did not report the root clean")
	}
	if out, err := exec.Command("e2fsck", "-fn", FSPath(disk)).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck after poweroff: %v\n%s", err, out)
	}
}
