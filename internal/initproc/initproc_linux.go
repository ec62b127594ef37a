// Package initproc is isboot as PID 1 in the initramfs: it mounts the early
// filesystems, reads the kernel command line, loads modules, turns the iBFT into a boot
// plan, configures the NIC, starts the "@isboot" daemon, waits for its NBD device,
// finds and mounts the root filesystem, and switch_roots into the real init.
//
// Every failure prints one line and ends in a rescue shell: PID 1 never returns.
package initproc

import (
	"errors"
	"fmt"
	"log"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/internal/daemon"
	"github.com/isboot/isboot/internal/klog"
	"github.com/isboot/isboot/internal/rootfind"
	"github.com/isboot/isboot/internal/status"
)

// pid1MemoryLimit is the heap at which PID 1 collects garbage (it does not before).
const pid1MemoryLimit = 64 << 20

// defaultTimeout is how long the boot waits for the LUN unless isboot.timeout says.
const defaultTimeout = 120 * time.Second

// step is one boot step: a name to print and the work.
type step struct {
	name string
	run  func() error
}

func (s step) String() string { return s.name }

// boot is the state the steps share.
type boot struct {
	pid1    bool // Run, not Attach: the boot ends in switch_root
	version string
	start   time.Time
	log     *klog.Logger
	mods    modules
	cmd     *cmdline.CmdLine
	table   *ibft.Table
	plan    *Plan
	nic     string
	child   *daemon.Child
	sent    bool   // the daemon has its configuration
	device  string // "nbd0"
	rootDev string // "/dev/nbd0p2"
	rootFS  rootfind.FS
	status  *status.Writer // PID 1's own status until the daemon takes over

	storageModules <-chan error // nbd loaded (or why not)

	halted   atomic.Bool // a failure went to the rescue path: no further step
	rescuing sync.Mutex  // held by the one rescue that owns the console
	onFail   func(error) // where recoverInto sends a panic; nil: rescue (tests replace it)
}

// setState writes the status file while PID 1 owns it (before the daemon has its
// configuration), so `isboot status` in the rescue shell says how far the boot got.
func (b *boot) setState(st status.State, lastErr string) {
	if b.sent {
		return
	}
	if b.status == nil {
		w, err := status.NewWriter(status.DefaultDir)
		if err != nil {
			return
		}
		b.status = w
	}
	s := &status.Status{Version: b.version, PID: os.Getpid(), State: st, LastError: lastErr, NIC: b.nic}
	if b.cmd != nil {
		s.Debug = b.cmd.Debug
	}
	if b.plan != nil {
		d := &b.plan.Daemon
		s.Target, s.LUN, s.LUNName, s.IBFT = d.TargetName, d.LUN, d.LUNString(), d.IBFT
		if len(d.Portals) > 0 {
			s.Portal = d.Portals[0]
		}
	}
	if err := b.status.Write(s); err != nil {
		b.log.Debugf(1, "%v", err)
	}
}

// Run is PID 1's boot. It never returns.
func Run(version string) {
	b := &boot{pid1: true, version: version, start: time.Now()}
	defer b.recoverInto("the boot")
	// PID 1 allocates little and execs the real init within seconds: collecting
	// garbage meanwhile only takes the boot's CPU. The limit still bounds a rescue
	// shell that stays up.
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(pid1MemoryLimit)
	// Before /dev and /proc there is no kernel log; the console is fd 1 and 2.
	var early []error
	for _, m := range earlyMounts {
		if err := m.Do(); err != nil {
			early = append(early, err)
		}
	}
	b.log = klog.Open("isboot", 0)
	b.mods.logf = b.log.Debugf
	log.SetFlags(0) // u-root's packages log through the standard logger
	log.SetOutput(logWriter{b.log})
	b.log.Infof("isboot %s as /init on Linux %s (kernel up %s)", version, kernelRelease(), kernelUptime())
	if err := errors.Join(early...); err != nil {
		b.rescue(err)
	}
	for _, s := range b.steps() {
		if b.halted.Load() {
			select {} // a background failure is in the rescue shell, which owns the console
		}
		t0 := time.Now()
		b.log.Debugf(1, "step: %s", s)
		if err := s.run(); err != nil {
			err = fmt.Errorf("%s: %w", s, err)
			if !b.resume(err) {
				b.rescue(err)
			}
		}
		b.log.Debugf(2, "step: %s done in %v", s, time.Since(t0).Round(time.Millisecond))
	}
	b.rescue(errors.New("switch_root returned"))
}

func (b *boot) steps() []step {
	return []step{
		{"read the kernel command line", b.readCmdline},
		{"start the daemon", b.startDaemon}, // it gets ready while the steps below run
		{"load storage modules", b.loadStorageModules},
		{"find the iBFT", b.findIBFT},
		{"plan the boot", b.makePlan},
		{"configure the network", b.configureNetwork},
		{"hand the daemon its target", b.sendPlan},
		{stepAttach, b.waitDevice}, // a distribution's initramfs stops here (Attach)
		{"rescue shell (isboot.shell)", b.optionalShell},
		{stepFindRoot, b.findRoot},
		{"mount root", b.mountRoot},
		{"switch root", b.switchRoot},
	}
}

type logWriter struct{ l *klog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.l.Infof("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// readCmdline reads the command line. A malformed key that only loses its own effect
// (isboot.debug=9) is a warning naming it; a malformed root= or netroot= stops the
// boot (cmdline.Split).
func (b *boot) readCmdline() error {
	err := b.takeCmdline(cmdline.Read())
	b.log.Debugf(2, "cpu: %s", cpuTimes(1))
	return err
}

func (b *boot) takeCmdline(c *cmdline.CmdLine, err error) error {
	if c != nil {
		b.cmd = c
		b.log.SetVerbosity(c.Debug)
	}
	fatal, warnings := cmdline.Split(err)
	for _, w := range warnings {
		b.log.Warnf("%v: ignored", w)
	}
	return fatal
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}

func kernelUptime() string {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	up, _, _ := strings.Cut(string(b), " ")
	return up + " s"
}
