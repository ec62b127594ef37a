package initproc

// Outside PID 1: isboot inside a distribution's initramfs (initramfs-tools, dracut).
// The same table of steps runs as far as the NBD attach; the distribution's own code
// then mounts root= and switches root, and the daemon keeps serving.

import (
	"bytes"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/internal/klog"
	"github.com/isboot/isboot/internal/status"
)

// The steps Attach stops after.
const (
	stepAttach   = "wait for the LUN" // the LUN is /dev/nbdN
	stepFindRoot = "find root"        // only with AttachOptions.FindRoot
)

// AttachOptions tunes Attach.
type AttachOptions struct {
	Host     string // whose initramfs this is, for the log ("initramfs-tools", "dracut")
	FindRoot bool   // also run the "find root" step: root= or the LUN's first Linux filesystem
}

// Attached is what Attach leaves behind.
type Attached struct {
	Device    string // "nbd0"
	Root      string // with FindRoot: the root filesystem's device, e.g. "/dev/nbd0p1"
	DaemonPID int
}

// attachSteps is PID 1's table up to and including the NBD attach, plus "find root"
// when asked: never the rescue shell, the mount or the switch, which the host
// initramfs does its own way.
func (b *boot) attachSteps(findRoot bool) []step {
	var out []step
	all := b.steps()
	for i, s := range all {
		out = append(out, s)
		if s.name != stepAttach {
			continue
		}
		if findRoot {
			for _, r := range all[i+1:] {
				if r.name == stepFindRoot {
					out = append(out, r)
				}
			}
		}
		return out
	}
	panic("initproc: no step " + stepAttach)
}

// Attach runs the boot steps up to /dev/nbd0 in someone else's initramfs and returns,
// leaving the "@isboot" daemon serving (in the root cgroup, so that no service manager
// stopping a unit takes it along). On failure the error names the step; a daemon that
// already has its target keeps trying, as it does under PID 1.
func Attach(version string, opts AttachOptions) (*Attached, error) {
	b := &boot{version: version, start: time.Now()}
	// The host initramfs mounted these; mounting again would hide its /run.
	for _, m := range earlyMounts {
		if isMountPoint(m.Target) {
			continue
		}
		if err := m.Do(); err != nil {
			return nil, err
		}
	}
	b.log = klog.Open("isboot", 0)
	b.mods.logf = b.log.Debugf
	log.SetFlags(0) // u-root's packages log through the standard logger
	log.SetOutput(logWriter{b.log})
	host := opts.Host
	if host == "" {
		host = "a distribution's"
	}
	b.log.Infof("isboot %s in %s initramfs (pid %d) on Linux %s (kernel up %s)", version, host, os.Getpid(), kernelRelease(), kernelUptime())
	var failed error
	moved := false
	for _, s := range b.attachSteps(opts.FindRoot) {
		t0 := time.Now()
		b.log.Debugf(1, "step: %s", s)
		err := s.run()
		if b.child != nil && !moved {
			// At once, before the daemon starts processes of its own: they inherit it.
			moved = true
			if err := leaveCgroup(b.child.Cmd.Process.Pid); err != nil {
				b.log.Warnf("daemon: %v (a service manager stopping this unit may stop the daemon)", err)
			}
		}
		if err != nil {
			failed = fmt.Errorf("%s: %w", s, err)
			break
		}
		b.log.Debugf(2, "step: %s done in %v", s, time.Since(t0).Round(time.Millisecond))
	}
	if b.child != nil && !b.sent {
		b.child.Cancel() // nothing to serve: it exits
	}
	if failed != nil {
		b.setState(status.Failed, failed.Error())
		if b.sent {
			return nil, fmt.Errorf("%w (the daemon keeps trying)", failed)
		}
		return nil, failed
	}
	b.log.Infof("/dev/%s is ready for the %s initramfs; the daemon (pid %d) serves it (%.2f s)", b.device, host, b.child.Cmd.Process.Pid, time.Since(b.start).Seconds())
	return &Attached{Device: b.device, Root: b.rootDev, DaemonPID: b.child.Cmd.Process.Pid}, nil
}

// isMountPoint reports whether dir is mounted on: a different device than its parent.
func isMountPoint(dir string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Dir(dir), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}

// leaveCgroup moves pid into the root control group. Started from a dracut hook under
// systemd, the daemon would otherwise belong to that hook's service, and a service's
// processes go when it is stopped: at the switch to the real root, or when the real
// root's systemd stops a unit it no longer knows at shutdown. In the root cgroup it is
// like a process started before systemd (initramfs-tools, PID 1 mode): only the
// shutdown's killing spree sees it, and that spares "@" processes.
func leaveCgroup(pid int) error {
	cur, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil // no cgroups: nothing to leave
	}
	if !inChildCgroup(cur) {
		return nil
	}
	var errs []error
	moved := false
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"} {
		procs := filepath.Join(root, "cgroup.procs")
		if _, err := os.Stat(procs); err != nil {
			continue
		}
		// The daemon and the serving process it already started: later ones are
		// born where the daemon is.
		for _, p := range append([]int{pid}, childPids(pid)...) {
			if err := os.WriteFile(procs, []byte(strconv.Itoa(p)+"\n"), 0); err != nil {
				errs = append(errs, fmt.Errorf("move pid %d to %s: %w", p, root, err))
				continue
			}
			moved = true
		}
	}
	if !moved && len(errs) == 0 {
		return errors.New("no cgroup hierarchy under /sys/fs/cgroup to move it to")
	}
	return errors.Join(errs...)
}

// childPids lists pid's children: each thread's, as a Go process forks from any.
func childPids(pid int) []int {
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, w := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(w); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// inChildCgroup reports whether /proc/self/cgroup names a group below the root in
// any hierarchy ("0::/system.slice/dracut-initqueue.service").
func inChildCgroup(procCgroup []byte) bool {
	for _, line := range bytes.Split(bytes.TrimSpace(procCgroup), []byte("\n")) {
		f := bytes.SplitN(line, []byte(":"), 3)
		if len(f) == 3 && string(f[2]) != "/" {
			return true
		}
	}
	return false
}

// Detect says whether this machine boots through isboot, and why: the kernel command
// line does not say isboot=off, and there is an iBFT (ACPI, base memory or sysfs) or a
// netroot=iscsi:. A host initramfs runs Attach only then, and leaves every other
// machine alone.
func Detect() (why string, ok bool) {
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Sprintf("cannot read the kernel command line: %v", err), false
	}
	if off, word := disabled(string(raw)); off {
		return word + " on the kernel command line", false
	}
	c, _ := cmdline.ParseString(string(raw)) // a malformed key of ours is Attach's to report
	if c != nil && c.Netroot != nil {
		return "netroot=iscsi: on the kernel command line", true
	}
	var table int
	if c != nil {
		table = c.IBFTACPITable
	}
	t, _, err := ibft.Find(ibft.FindOptions{Table: table})
	if err != nil {
		if errors.Is(err, ibft.ErrNotFound) {
			return "no iBFT and no netroot=iscsi:", false
		}
		// A defective table still means the firmware booted from iSCSI: Attach says what is wrong.
		return fmt.Sprintf("an iBFT that does not parse (%v)", err), true
	}
	return "iBFT at " + t.Source, true
}

// disabled finds isboot=off (or =0, =no, =false) on a kernel command line: the
// administrator's way to let another initiator (open-iscsi) boot the machine.
func disabled(line string) (bool, string) {
	for _, w := range strings.Fields(line) {
		if w == "--" {
			break
		}
		k, v, ok := strings.Cut(w, "=")
		if ok && (k == "isboot" || k == "rd.isboot") {
			switch strings.ToLower(v) {
			case "off", "0", "no", "false":
				return true, w
			}
		}
	}
	return false, ""
}
