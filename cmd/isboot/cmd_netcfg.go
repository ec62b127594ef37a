package main

import (
	"context"
	"encoding/json"
	"errors"
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
	c := newCLI("netcfg", "(--file IBFT | --source auto|acpi|mem|sysfs) [--table N] [--nic N] [--dry-run] [--json] [--cmdline FILE] [--resolv-conf FILE]", stdout, stderr)
	findOpts := ibftSourceFlags(c.FlagSet)
	nic := c.Int("nic", -1, "iBFT NIC index to configure; default: the NIC of the boot target")
	dryRun := c.Bool("dry-run", false, "print the plan, change nothing")
	asJSON := c.Bool("json", false, jsonUsage)
	cmdlinePath := c.String("cmdline", "/proc/cmdline", `kernel command line whose overrides apply (netroot=, isboot.dhcp); "" for none`)
	resolv := c.String("resolv-conf", "/etc/resolv.conf", "where the DNS servers go")
	if code := c.parse(args); code >= 0 {
		return code
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }

	t, _, err := ibft.Find(findOpts())
	if err != nil {
		return c.fail(err)
	}
	cl := &cmdline.CmdLine{}
	if *cmdlinePath != "" {
		if cl, err = readCmdline(*cmdlinePath, logf); err != nil {
			return c.fail(err)
		}
	}
	p, err := bootplan.Network(cl, t, *nic)
	if err != nil {
		return c.fail(err)
	}
	if *dryRun {
		if *asJSON {
			return printJSON(c, p)
		}
		fmt.Fprint(stdout, p)
		return 0
	}
	if !*asJSON {
		fmt.Fprint(stdout, p)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	defer stop()
	a, err := netcfg.Apply(ctx, p, netcfg.Options{ResolvConf: *resolv, Logf: logf})
	if err != nil {
		return c.fail(err)
	}
	defer a.Close()
	if *asJSON {
		changes := a.Changes
		if changes == nil {
			changes = []string{}
		}
		return printJSON(c, map[string]any{"plan": p, "link": a.Link, "changes": changes})
	}
	if len(a.Changes) == 0 {
		fmt.Fprintf(stdout, "netcfg: %s already configured, nothing changed\n", a.Link)
	}
	for _, ch := range a.Changes {
		fmt.Fprintf(stdout, "netcfg: %s\n", ch)
	}
	return 0
}

// printJSON prints v as one indented object.
func printJSON(c *cli, v any) int {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(c.stdout, "%s\n", b)
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
