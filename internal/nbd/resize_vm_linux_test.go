package nbd_test

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

// TestKernelResizeVM: Attachment.Resize gives a mounted-or-not /dev/nbdN its new
// size through NBD_CMD_RECONFIGURE (what the daemon does when the target reports
// a capacity change), and the kernel's device follows (Linux 5.3 and later).
func TestKernelResizeVM(t *testing.T) {
	vm.Require(t)
	k := vm.DebianKernel(t)
	busybox := testenv.LookPath(t, "VM test", "busybox")
	helper := filepath.Join(t.TempDir(), "resizeguest")
	build := exec.Command("go", "build", "-o", helper, "./testdata/resizeguest")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the guest helper: %v\n%s", err, out)
	}
	script := `#!/bin/busybox sh
export PATH=/bin
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
modprobe nbd nbds_max=2 || echo "RESULT=FAIL modprobe nbd"
/bin/resizeguest
poweroff -f
`
	a := initramfs.New()
	for _, err := range []error{
		a.AddBytes("init", []byte(script), 0o755),
		a.AddFile("bin/busybox", busybox, 0o755),
		a.AddFile("bin/resizeguest", helper, 0o755),
		a.AddModules(k.Root, k.Version, "nbd"),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	initrd := filepath.Join(t.TempDir(), "initrd.gz")
	if err := a.WriteFile(initrd); err != nil {
		t.Fatal(err)
	}
	v := vm.Start(t, vm.Config{Kernel: k.Image, Initrd: initrd, Cmdline: "console=ttyS0 panic=-1 loglevel=4"})
	m, err := v.WaitFor(context.Background(), 5*time.Minute, `RESULT=(PASS|FAIL[^\r\n]*)\r?\n`)
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	v.Wait(context.Background(), time.Minute)
	for _, l := range strings.Split(v.Console(), "\n") {
		if strings.HasPrefix(l, "STEP ") || strings.Contains(l, "nbd0") {
			t.Log(strings.TrimSpace(l))
		}
	}
	if m[1] != "PASS" {
		t.Fatalf("guest: %s", m[1])
	}
}
