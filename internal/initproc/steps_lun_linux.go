package initproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/bootplan"
	"github.com/isboot/isboot/internal/daemon"
	"github.com/isboot/isboot/internal/netguard"
	"github.com/isboot/isboot/internal/status"
	"github.com/isboot/isboot/netcfg"
)

// The steps up to the LUN: storage modules, the iBFT, the plan, the network, the
// daemon and its device.

// nbdMaxPart is the nbd driver's max_part: nbd0p1 to nbd0p15 get device nodes.
const nbdMaxPart = 16

// nbdParams are the nbd module's parameters. nbds_max=1: the driver would otherwise
// create 16 devices up front, a tenth of a second of the boot's one emulated CPU for
// devices nobody uses; the netlink interface creates more on demand (nbd-client -N).
var nbdParams = fmt.Sprintf("max_part=%d nbds_max=1", nbdMaxPart)

// loadStorageModules loads nbd (with partitions) and crc32c in the background: the
// daemon needs them only when it attaches, after the network is up. crc32c is loaded
// by name, as ext4 and jbd2 want it but only name it as a soft dependency, which the
// loader does not follow.
func (b *boot) loadStorageModules() error {
	done := make(chan error, 1)
	b.storageModules = done
	b.goSafe("load storage modules", func() {
		for _, m := range crc32cModules(cpuFlags()) {
			if err := b.mods.Load(m, ""); err != nil {
				b.log.Debugf(1, "%v", err)
			}
		}
		done <- b.mods.Load("nbd", nbdParams)
	})
	return nil
}

func (b *boot) findIBFT() error {
	b.setState(status.Discovering, "")
	if !bootplan.UseIBFT(b.cmd) {
		b.log.Infof("rd.iscsi.firmware=0: not looking for an iBFT; booting from the command line")
		return nil
	}
	logf := func(format string, a ...any) { b.log.Debugf(2, format, a...) }
	if b.cmd.IBFTVerbose {
		logf = b.log.Infof
	}
	t, _, err := ibft.Find(ibft.FindOptions{Table: b.cmd.IBFTACPITable, Logf: logf, LoadModule: b.mods.LoadModule})
	if err != nil {
		if b.cmd.Netroot != nil {
			if errors.Is(err, ibft.ErrNotFound) {
				b.log.Infof("no iBFT: booting from the command line (netroot=)")
			} else {
				b.log.Warnf("%v; going on with netroot=", err)
			}
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
	p.Daemon.EmptyInitramfs = b.pid1   // after switch_root's exec
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
	// A link-local target is only reachable through the boot NIC's interface, which
	// is known now.
	if zoned := bootplan.ZonePortals(b.plan.Daemon.Portals, applied.Link); !slices.Equal(zoned, b.plan.Daemon.Portals) {
		b.log.Infof("network: link-local target: dialing %s", strings.Join(zoned, ","))
		b.plan.Daemon.Portals = zoned
	}
	if applied.Choice != "" {
		b.log.Infof("network: using %s", applied.Choice)
	}
	b.log.Infof("network: %s is %s", applied.Link, np.Addr)
	if l := applied.Lease; l != nil {
		// The daemon renews it for the life of the system.
		b.plan.Daemon.Lease = l
		if len(l.Reply) == 0 {
			b.log.Infof("network: %s on %s is the firmware's DHCP lease: the daemon confirms it after the boot", l.Addr, l.Link)
		} else {
			b.log.Infof("network: DHCP lease %s", l)
		}
	}
	// Optional: the real root only loses its DNS servers without these files.
	files, err := carryNetwork("/run", np, applied.Link)
	if err != nil {
		b.log.Warnf("network: for the real root: %v", err)
	}
	b.log.Debugf(1, "network: for the real root: %s", strings.Join(files, ", "))
	b.guardNetwork(np, applied.Link)
	b.configurePathNICs()
	return nil
}

// guardNetwork keeps the real root's network managers off the boot NIC (files in
// /run) and has the daemon put back what they, or anyone, take away; isboot.guard=0
// leaves the NIC to them.
func (b *boot) guardNetwork(np *netcfg.Plan, link string) {
	if b.cmd.NoGuard {
		b.log.Infof("network: isboot.guard=0: %s is left to the real root's network tools", link)
		return
	}
	ifc, err := net.InterfaceByName(link)
	if err != nil {
		b.log.Warnf("network: guard: %v; %s is not guarded", err, link)
		return
	}
	b.plan.Daemon.Guard = netguard.SpecOf(np, link, ifc.Index)
	files, err := carryGuard("/run", np, link)
	if err != nil {
		b.log.Warnf("network: for the real root: %v", err)
	}
	b.log.Debugf(1, "network: guarded; for the real root's network tools: %s", strings.Join(files, ", "))
}

// configurePathNICs brings up the iBFT NICs that other paths of a multipath LUN go
// through. A path is optional: a NIC that fails is a warning, and its path keeps
// trying in the background.
func (b *boot) configurePathNICs() {
	for _, nic := range b.plan.Boot.PathNICs {
		np, err := bootplan.Network(b.cmd, b.table, nic)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			var applied *netcfg.Applied
			applied, err = netcfg.Apply(ctx, np, netcfg.Options{
				LoadModule: b.mods.LoadModule,
				Logf:       func(f string, a ...any) { b.log.Debugf(1, f, a...) },
			})
			cancel()
			if err == nil {
				b.log.Infof("network: %s is %s (iBFT nic%d, for another path)", applied.Link, np.Addr, nic)
				continue
			}
		}
		b.log.Warnf("network: iBFT nic%d, for another path: %v", nic, err)
	}
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
