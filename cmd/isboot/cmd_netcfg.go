package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"os/signal"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/netcfg"
	"golang.org/x/sys/unix"
)

func init() {
	register("netcfg", "configure (or print, --dry-run) the boot NIC the iBFT describes", runNetcfg)
}

func runNetcfg(args []string) int {
	return netcfgMain(args, os.Stdout, os.Stderr)
}

func netcfgMain(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("netcfg", flag.ContinueOnError)
	fl.SetOutput(stderr)
	findOpts := ibftSourceFlags(fl)
	nic := fl.Int("nic", -1, "iBFT NIC index to configure; default: the NIC of the boot target")
	dryRun := fl.Bool("dry-run", false, "print the plan, change nothing")
	cmdlinePath := fl.String("cmdline", "/proc/cmdline", `kernel command line whose overrides apply (netroot=, isboot.dhcp); "" for none`)
	resolv := fl.String("resolv-conf", "/etc/resolv.conf", "where the DNS servers go")
	fl.Usage = func() {
		fmt.Fprintln(stderr, "usage: isboot netcfg (--file IBFT | --source auto) [--nic N] [--dry-run]")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if fl.NArg() > 0 {
		fl.Usage()
		return 2
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }

	t, _, err := ibft.Find(findOpts())
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	var ov netcfg.Overrides
	if *cmdlinePath != "" {
		cl, err := readCmdline(*cmdlinePath, logf)
		if err != nil {
			fmt.Fprintln(stderr, "netcfg:", err)
			return 1
		}
		ov = netcfgOverrides(cl, logf)
	}
	p, err := netcfgPlan(t, *nic, ov)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprint(stdout, p)
	if *dryRun {
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	defer stop()
	a, err := netcfg.Apply(ctx, p, netcfg.Options{ResolvConf: *resolv, Logf: logf})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer a.Close()
	if len(a.Changes) == 0 {
		fmt.Fprintf(stdout, "netcfg: %s already configured, nothing changed\n", a.Link)
	}
	for _, c := range a.Changes {
		fmt.Fprintf(stdout, "netcfg: %s\n", c)
	}
	return 0
}

// netcfgPlan plans the configuration of iBFT NIC nic, or of the boot target's NIC
// when nic is negative, the way the boot does.
func netcfgPlan(t *ibft.Table, nic int, ov netcfg.Overrides) (*netcfg.Plan, error) {
	if nic < 0 {
		c, err := t.BootChoice()
		if err != nil {
			return nil, err
		}
		nic = c.NIC.Index
	}
	return netcfg.NewPlan(t, nic, ov)
}

// netcfgOverrides turns the kernel command line into plan overrides: a netroot= server
// given as an address replaces the iBFT targets (old iPXE writes garbage IPv4 for IPv6
// targets); isboot.dhcp asks for DHCP renewal.
func netcfgOverrides(cl *cmdline.CmdLine, logf func(string, ...any)) netcfg.Overrides {
	var ov netcfg.Overrides
	ov.Renew = cl.DHCP
	if cl.Netroot != nil && cl.Netroot.Server != "" {
		if a, err := netip.ParseAddr(cl.Netroot.Server); err == nil {
			ov.Targets = []netip.Addr{a}
		} else {
			logf("netcfg: netroot= server %q is not an address; no host route for it", cl.Netroot.Server)
		}
	}
	return ov
}

// readCmdline parses a kernel command line file; a missing file means no overrides.
// Parse fills in every valid key even when others are malformed, so a bad key is a
// warning, not a reason to leave the network down.
func readCmdline(path string, logf func(string, ...any)) (*cmdline.CmdLine, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &cmdline.CmdLine{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cl, err := cmdline.Parse(f)
	if err != nil {
		logf("netcfg: warning: %s: %v", path, err)
	}
	return cl, nil
}
