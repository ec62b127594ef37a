// Package initproc is isboot as PID 1 in the initramfs: it mounts the early
// filesystems, reads the kernel command line, loads modules, turns the iBFT into a boot
// plan, configures the NIC, starts the "@isboot" daemon, waits for its NBD device,
// finds and mounts the root filesystem, and switch_roots into the real init.
//
// Every failure prints one line and ends in a rescue shell: PID 1 never returns.
package initproc

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/bootplan"
	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/internal/daemon"
	"github.com/isboot/isboot/internal/klog"
	"github.com/isboot/isboot/internal/rootfind"
	"github.com/isboot/isboot/internal/status"
	"github.com/isboot/isboot/netcfg"
)

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
		s.Target, s.LUN, s.IBFT = d.TargetName, d.LUN, d.IBFT
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
	b := &boot{version: version, start: time.Now()}
	defer b.recoverInto("the boot")
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
	return b.takeCmdline(cmdline.Read())
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

// nbdMaxPart is the nbd driver's max_part: nbd0p1 to nbd0p15 get device nodes.
const nbdMaxPart = 16

// loadStorageModules loads nbd (with partitions) and crc32c in the background: the
// daemon needs them only when it attaches, after the network is up. crc32c is loaded
// by name, as ext4 and jbd2 want it but only name it as a soft dependency, which the
// loader does not follow.
func (b *boot) loadStorageModules() error {
	done := make(chan error, 1)
	b.storageModules = done
	b.goSafe("load storage modules", func() {
		for _, m := range []string{"crc32c_intel", "crc32c_generic"} {
			if err := b.mods.Load(m, ""); err != nil {
				b.log.Debugf(1, "%v", err)
			}
		}
		done <- b.mods.Load("nbd", fmt.Sprintf("max_part=%d", nbdMaxPart))
	})
	return nil
}

func (b *boot) findIBFT() error {
	b.setState(status.Discovering, "")
	logf := func(format string, a ...any) { b.log.Debugf(2, format, a...) }
	if b.cmd.IBFTVerbose {
		logf = b.log.Infof
	}
	t, _, err := ibft.Find(ibft.FindOptions{Table: b.cmd.IBFTACPITable, Logf: logf, LoadModule: b.mods.LoadModule})
	if err != nil {
		if b.cmd.Netroot != nil {
			b.log.Warnf("%v; going on with netroot=", err)
			return nil
		}
		return err
	}
	b.table = t
	b.log.Infof("iBFT found at %s", t.Source)
	return nil
}

func (b *boot) makePlan() error {
	p, err := MakePlan(b.cmd, b.table)
	if err != nil {
		return err
	}
	p.Daemon.Version = b.version
	p.Daemon.StatusDir = status.DefaultDir
	p.Daemon.Root = daemon.DefaultRoot // restarts need nothing from the root it serves
	b.plan = p
	for _, n := range p.Boot.Notes {
		b.log.Infof("note: %s", n)
	}
	b.log.Infof("target: %s", &p.Daemon)
	b.log.Debugf(1, "boot plan:\n%s", p.Boot)
	return nil
}

func (b *boot) configureNetwork() error {
	b.setState(status.Configuring, "")
	np, err := bootplan.Network(b.cmd, b.table, b.plan.Boot.NIC)
	if err != nil {
		return err
	}
	for _, w := range np.Warnings {
		b.log.Warnf("netcfg: %s", w)
	}
	b.log.Debugf(1, "network plan:\n%s", np)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	applied, err := netcfg.Apply(ctx, np, netcfg.Options{
		LoadModule: b.mods.LoadModule,
		Logf:       func(f string, a ...any) { b.log.Debugf(1, f, a...) },
	})
	if err != nil {
		return err
	}
	b.nic = applied.Link
	b.plan.Daemon.NIC = applied.Link
	b.log.Infof("network: %s is %s", applied.Link, np.Addr)
	// Optional: the real root only loses its DNS servers without these files.
	files, err := carryNetwork("/run", np, applied.Link)
	if err != nil {
		b.log.Warnf("network: for the real root: %v", err)
	}
	b.log.Debugf(1, "network: for the real root: %s", strings.Join(files, ", "))
	return nil
}

func (b *boot) startDaemon() error {
	exe, err := os.Executable()
	if err != nil {
		exe = "/init"
	}
	con, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err != nil {
		con = os.Stderr
	}
	b.child, err = daemon.Start(exe, con)
	if con != os.Stderr {
		con.Close()
	}
	if err != nil {
		return err
	}
	b.log.Debugf(1, "daemon started, pid %d", b.child.Cmd.Process.Pid)
	return nil
}

func (b *boot) sendPlan() error {
	if err := <-b.storageModules; err != nil {
		return err
	}
	b.sent = true
	if err := b.child.Send(&b.plan.Daemon); err != nil {
		return err
	}
	// Load the usual root filesystem's module while the login runs; mountRoot loads
	// whatever the root really holds (a second load of the same module is free).
	b.goSafe("load ext4", func() {
		if err := b.mods.Load("ext4", ""); err != nil {
			b.log.Debugf(1, "%v", err)
		}
	})
	return nil
}

// waitDevice waits for the daemon's "ready", saying every 5 s what it waits for.
func (b *boot) waitDevice() error {
	timeout := defaultTimeout
	if b.cmd.Timeout >= 0 {
		timeout = time.Duration(b.cmd.Timeout) * time.Second
	}
	var deadline <-chan time.Time
	if timeout > 0 {
		deadline = time.After(timeout)
	}
	t0 := time.Now()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	last := ""
	what := fmt.Sprintf("%s at %s", b.plan.Daemon.TargetName, strings.Join(b.plan.Daemon.Portals, ","))
	for {
		select {
		case e, ok := <-b.child.Events:
			if !ok {
				return fmt.Errorf("the daemon exited before %s was ready (%s)", what, orNothing(last))
			}
			switch e.Kind {
			case daemon.EventReady:
				b.device = e.Text
				b.log.Infof("%s is /dev/%s (%.1f s after /init)", what, b.device, time.Since(b.start).Seconds())
				return nil
			case daemon.EventFatal:
				return fmt.Errorf("%s: %s", what, e.Text)
			case daemon.EventRetry:
				last = e.Text
			}
		case <-tick.C:
			b.log.Infof("waiting for %s: %.0f s so far; last: %s", what, time.Since(t0).Seconds(), orNothing(last))
		case <-deadline:
			return &loginTimeout{fmt.Sprintf("no login to %s in %v (isboot.timeout=); last error: %s", what, timeout, orNothing(last))}
		}
	}
}

func orNothing(s string) string {
	if s == "" {
		return "none reported"
	}
	return s
}

func (b *boot) optionalShell() error {
	if b.cmd.Shell {
		b.log.Infof("isboot.shell: rescue shell before switch_root; exit it to go on")
		b.rescueShell()
	}
	return nil
}

func (b *boot) findRoot() error {
	dev := "/dev/" + b.device
	f, err := os.Open(dev) // the first open makes the kernel read the partition table
	if err != nil {
		return err
	}
	defer f.Close()
	if b.cmd.Root.Kind == cmdline.RootPath {
		b.rootDev = b.cmd.Root.Value
		if err := waitDevice(f, b.rootDev); err != nil {
			return err
		}
		r, err := os.Open(b.rootDev)
		if err != nil {
			return err
		}
		b.rootFS = rootfind.ProbeFS(r)
		r.Close()
		b.log.Infof("root: %s (root=, %s)", b.rootDev, b.rootFS)
		return nil
	}
	size, err := f.Seek(0, 2)
	if err != nil {
		return fmt.Errorf("%s: size: %w", dev, err)
	}
	disk, err := rootfind.Probe(f, size)
	if err != nil {
		return err
	}
	choice, err := disk.Find(b.cmd.Root)
	if err != nil {
		return err
	}
	b.rootDev, b.rootFS = dev, choice.FS
	if choice.Partition >= nbdMaxPart {
		return fmt.Errorf("root is partition %d of %s, but nbd is loaded with max_part=%d: give root= a partition below %d", choice.Partition, dev, nbdMaxPart, nbdMaxPart)
	}
	if choice.Partition > 0 {
		b.rootDev = fmt.Sprintf("%sp%d", dev, choice.Partition)
		if err := waitDevice(f, b.rootDev); err != nil {
			return err
		}
	}
	b.log.Infof("root: %s (%s)", b.rootDev, choice.Why)
	return nil
}

// waitDevice waits for a partition's node; if the kernel has not made it from the
// scan on open, it asks for a rescan of the whole device once.
func waitDevice(whole *os.File, p string) error {
	if err := waitPath(p, 3*time.Second); err == nil {
		return nil
	}
	_ = unix.IoctlSetInt(int(whole.Fd()), unix.BLKRRPART, 0)
	// Generous: the rescan reads through the target, which may be slow or busy.
	return waitPath(p, 30*time.Second)
}

func waitPath(p string, d time.Duration) error {
	end := time.Now().Add(d)
	for {
		if _, err := os.Stat(p); err == nil {
			return nil
		} else if time.Now().After(end) {
			return fmt.Errorf("%s did not appear in %v", p, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *boot) mountRoot() error {
	fstype := b.cmd.RootFSType
	if fstype == "" {
		fstype = b.rootFS.MountType()
	}
	if fstype == "" {
		return fmt.Errorf("%s: no known filesystem (give rootfstype=)", b.rootDev)
	}
	if err := b.mods.Load(fstype, ""); err != nil {
		b.log.Debugf(1, "%v (built in?)", err)
	}
	m := rootMount(b.rootDev, fstype, b.cmd.RootFlags, b.cmd.ReadWrite)
	b.log.Infof("%s", m)
	return m.Do()
}

func (b *boot) switchRoot() error {
	init := b.cmd.Init
	if init == "" {
		init = "/sbin/init"
	}
	if err := checkInit(newRoot, init); err != nil {
		return err
	}
	b.log.Infof("switching to the real root, exec %s (%.2f s after /init)", init, time.Since(b.start).Seconds())
	// Nothing left to wait for: the daemon carries on alone. init gets what the
	// kernel passed to us: bare words ("single") and everything after "--" as
	// arguments, HOME, TERM and plain a=b words as its environment, never a secret.
	env, withheld := initEnv(os.Environ())
	if len(withheld) > 0 {
		b.log.Infof("init's environment leaves out %s (they may hold secrets)", strings.Join(withheld, ", "))
	}
	return switchRoot(newRoot, init, os.Args[1:], env)
}

// checkInit makes sure init exists in the new root before the initramfs (and with it
// the rescue shell) is deleted. Symlinks resolve inside the new root.
func checkInit(root, init string) error {
	p := init
	for range 16 {
		full := filepath.Join(root, p)
		st, err := os.Lstat(full)
		if err != nil {
			return fmt.Errorf("init %s: %w (give init=)", init, err)
		}
		if st.Mode()&os.ModeSymlink == 0 {
			if st.Mode()&0o111 == 0 || !st.Mode().IsRegular() {
				return fmt.Errorf("init %s: not an executable file", init)
			}
			return nil
		}
		target, err := os.Readlink(full)
		if err != nil {
			return fmt.Errorf("init %s: %w", init, err)
		}
		if filepath.IsAbs(target) {
			p = target
		} else {
			p = filepath.Join(filepath.Dir(p), target)
		}
	}
	return fmt.Errorf("init %s: too many symlinks", init)
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
