// Command isboot boots Linux from an iSCSI LUN described by the iBFT and serves that
// LUN to the kernel over NBD for the life of the system.
//
// One static binary, many roles: as /init (PID 1) it runs the boot; as "@isboot" it is
// the serving daemon that outlives switch_root; otherwise argv[1] names a subcommand.
package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

// Version is set by the Makefile with -ldflags "-X main.Version=...".
var Version = "dev"

// command is one subcommand. Each lives in its own cmd_*.go file and registers itself
// in init, so features land without touching this file.
type command struct {
	summary string
	run     func(args []string) int
}

var commands = map[string]command{}

func register(name, summary string, run func(args []string) int) {
	commands[name] = command{summary: summary, run: run}
}

func init() {
	register("version", "print the version", func(args []string) int {
		if code := newCLI("version", "", os.Stdout, os.Stderr).parse(args); code >= 0 {
			return code
		}
		fmt.Println("isboot", Version)
		return 0
	})
}

// roleHooks lets the init and daemon roles claim the process before subcommand dispatch
// (PID 1 and "@isboot" are chosen by how we were started, not by argv[1]).
var roleHooks []func() (handled bool)

func main() {
	for _, h := range roleHooks {
		if h() {
			return
		}
	}
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	c, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "isboot: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	os.Exit(c.run(os.Args[2:]))
}

func usage() {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("usage: isboot <command> [flags]\n\ncommands:\n")
	for _, n := range names {
		fmt.Fprintf(&b, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprint(os.Stderr, b.String())
}
