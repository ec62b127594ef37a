package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/isboot/isboot/ibft"
	"github.com/u-root/u-root/pkg/kmodule"
)

func init() { register("ibft", "find, validate and print the iSCSI Boot Firmware Table", runIbft) }

func runIbft(args []string) int {
	return ibftMain(args, os.Stdout, os.Stderr)
}

func ibftMain(args []string, stdout, stderr io.Writer) int {
	c := newCLI("ibft", "[--file PATH | --source auto|acpi|mem|sysfs] [--table N] [--json] [--show-secrets] [--verbose]", stdout, stderr)
	findOpts := ibftSourceFlags(c.FlagSet)
	asJSON := c.Bool("json", false, jsonUsage)
	showSecrets := c.Bool("show-secrets", false, `print CHAP secrets instead of "***"`)
	verbose := c.Bool("verbose", false, "log each search step to stderr (like ibft.verbose=1)")
	if code := c.parse(args); code >= 0 {
		return code
	}
	opts := findOpts()
	if *verbose {
		opts.Logf = func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }
	}
	t, _, err := ibft.Find(opts)
	if err != nil {
		return c.fail(err)
	}
	if *asJSON {
		b, err := t.JSON(*showSecrets)
		if err != nil {
			return c.fail(err)
		}
		fmt.Fprintf(stdout, "%s\n", b)
		return 0
	}
	for _, kv := range t.Keys(*showSecrets) {
		fmt.Fprintln(stdout, kv)
	}
	return 0
}

// jsonUsage is --json's help, the same wherever the output is structured.
const jsonUsage = "print one JSON object"

// ibftSourceFlags adds --file, --source and --table to fl, for every subcommand that
// reads the iBFT; call the returned function after fl.Parse for the search options.
func ibftSourceFlags(fl *flag.FlagSet) func() ibft.FindOptions {
	file := fl.String("file", "", "read the iBFT from this file instead of searching the system")
	source := fl.String("source", ibft.SourceAuto, "where to look: auto, acpi, mem or sysfs")
	table := fl.Int("table", 1, "ACPI instance to use, 1-based (like ibft.acpi_table=N)")
	return func() ibft.FindOptions {
		opts := ibft.FindOptions{
			Source:     *source,
			Table:      *table,
			LoadModule: func(name string) error { return kmodule.Probe(name, "") },
		}
		if *file != "" {
			opts.Source, opts.File = ibft.SourceFile, *file
		}
		return opts
	}
}
