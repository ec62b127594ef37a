// Package guest is the in-VM side of the vm harness: small steps a test
// guest's /init needs before it can do its job and report back.
//
//	guest.MountKernelFS()          // /proc, /sys, /dev (devtmpfs)
//	guest.LoadModules()            // what initramfs.AddModules packed
//	rep := guest.Report()          // ttyS1, read on the host with VM.Report
//	v := guest.Arg("mytest.mode")  // key=value from the kernel command line
//	guest.PowerOff()               // QEMU exits (the harness runs it with -no-reboot)
package guest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrorPrefix starts every line this package prints about a failure, so a
// host test can fail on it.
const ErrorPrefix = "GUEST-ERROR "

func logf(format string, a ...any) { fmt.Printf(ErrorPrefix+format+"\n", a...) }

// MountKernelFS mounts proc, sysfs and devtmpfs; failures are printed.
func MountKernelFS() {
	for _, m := range []struct{ src, dst, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fs, 0, ""); err != nil {
			logf("mount %s: %v", m.dst, err)
		}
	}
}

// Report opens the second serial port, the harness's clean report channel;
// without it, stdout.
func Report() *os.File {
	f, err := os.OpenFile("/dev/ttyS1", os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		logf("report channel: %v", err)
		return os.Stdout
	}
	return f
}

// Arg returns the value of key=value on the kernel command line, or "".
func Arg(key string) string {
	b, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// LoadModules loads every module listed in the running kernel's modules.dep,
// dependencies first, and returns the names loaded; failures are printed.
func LoadModules() []string {
	var u unix.Utsname
	unix.Uname(&u)
	dir := filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
	dep, err := os.ReadFile(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil // no modules packed
	}
	deps := map[string][]string{}
	var order []string
	for _, line := range strings.Split(string(dep), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m := strings.TrimSuffix(f[0], ":")
		deps[m] = f[1:]
		order = append(order, m)
	}
	var loaded []string
	done := map[string]bool{}
	var load func(m string)
	load = func(m string) {
		if done[m] {
			return
		}
		done[m] = true
		// modules.dep lists the deepest dependency last; modprobe loads it first.
		for i := len(deps[m]) - 1; i >= 0; i-- {
			load(deps[m][i])
		}
		f, err := os.Open(filepath.Join(dir, m))
		if err != nil {
			logf("module %s: %v", m, err)
			return
		}
		defer f.Close()
		if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && err != unix.EEXIST {
			logf("module %s: %v", m, err)
			return
		}
		loaded = append(loaded, strings.TrimSuffix(filepath.Base(m), ".ko"))
	}
	for _, m := range order {
		load(m)
	}
	return loaded
}

// PowerOff syncs and powers the machine off; it does not return.
func PowerOff() {
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}
