package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// cli is one subcommand's flags, usage and error format, the same for every
// subcommand:
//   - --help (or -h) prints the usage line and every flag to stdout and exits 0;
//   - a usage error prints "isboot <sub>: <message>" and the usage line to stderr
//     and exits 2;
//   - a runtime error prints "isboot <sub>: <message>", one line, to stderr and
//     exits 1.
type cli struct {
	*flag.FlagSet
	name     string
	synopsis string // the usage line after "usage: isboot <name> "
	stdout   io.Writer
	stderr   io.Writer
}

func newCLI(name, synopsis string, stdout, stderr io.Writer) *cli {
	fl := flag.NewFlagSet(name, flag.ContinueOnError)
	fl.SetOutput(io.Discard) // parse errors are printed in the format above
	return &cli{FlagSet: fl, name: name, synopsis: synopsis, stdout: stdout, stderr: stderr}
}

// parse parses args, which must all be flags. It returns -1 to go on, or the exit
// code to end with.
func (c *cli) parse(args []string) int {
	err := c.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		c.help()
		return 0
	case err != nil:
		return c.usageError("%s", doubleDash(err.Error()))
	case c.NArg() > 0:
		return c.usageError("unexpected argument %q", c.Arg(0))
	}
	return -1
}

func (c *cli) usageLine() string {
	return strings.TrimSpace("usage: isboot " + c.name + " " + c.synopsis)
}

// help prints the usage line and each flag, in the --name form the usage line uses.
func (c *cli) help() {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\n", c.usageLine())
	c.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(&b, "  --%s", f.Name)
		if arg != "" {
			fmt.Fprintf(&b, " %s", arg)
		}
		fmt.Fprintf(&b, "\n    \t%s", strings.ReplaceAll(usage, "\n", "\n    \t"))
		if d := f.DefValue; d != "" && d != "false" && d != "0" && d != "0s" {
			fmt.Fprintf(&b, " (default %s)", d)
		}
		b.WriteString("\n")
	})
	io.WriteString(c.stdout, b.String())
}

// usageError reports a mistake in the command line: exit code 2.
func (c *cli) usageError(format string, a ...any) int {
	fmt.Fprintf(c.stderr, "isboot %s: %s\n%s\n", c.name, fmt.Sprintf(format, a...), c.usageLine())
	return 2
}

// fail reports a runtime error on one line: exit code 1. A message that starts with
// the subcommand's name (the ibft package's "ibft: ...") does not repeat it.
func (c *cli) fail(err error) int {
	msg := strings.TrimPrefix(err.Error(), c.name+": ")
	msg = strings.ReplaceAll(strings.TrimSpace(msg), "\n", "; ")
	fmt.Fprintf(c.stderr, "isboot %s: %s\n", c.name, msg)
	return 1
}

// doubleDash spells the flag package's "-name" as the "--name" the usage shows.
func doubleDash(msg string) string {
	for _, s := range []string{"defined: -", "argument: -", "flag -"} {
		msg = strings.Replace(msg, s, s+"-", 1)
	}
	return msg
}
