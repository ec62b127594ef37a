package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/bootplan"
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
	cl := &cmdline.CmdLine{}
	if *cmdlinePath != "" {
		if cl, err = readCmdline(*cmdlinePath, logf); err != nil {
			fmt.Fprintln(stderr, "netcfg:", err)
			return 1
		}
	}
	p, err := bootplan.Network(cl, t, *nic)
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
