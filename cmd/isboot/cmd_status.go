package main

import (
	"fmt"
	"io"
	"os"

	"github.com/isboot/isboot/internal/status"
)

func init() {
	register("status", "print the boot daemon's status (/run/isboot/status)", func(args []string) int {
		return statusMain(args, os.Stdout, os.Stderr)
	})
}

// statusFileUsage is --file's help wherever it names a status file to read.
const statusFileUsage = "read the status from this file instead of " + status.DefaultPath

func statusMain(args []string, stdout, stderr io.Writer) int {
	c := newCLI("status", "[--file PATH] [--json]", stdout, stderr)
	asJSON := c.Bool("json", false, jsonUsage)
	path := c.String("file", status.DefaultPath, statusFileUsage)
	if code := c.parse(args); code >= 0 {
		return code
	}
	kv, err := status.ReadFile(*path)
	if os.IsNotExist(err) {
		return c.fail(fmt.Errorf("%w (is isboot serving this system?)", err))
	}
	if err != nil {
		return c.fail(err)
	}
	if *asJSON {
		stdout.Write(status.JSON(kv))
		return 0
	}
	for _, e := range kv {
		fmt.Fprintf(stdout, "%s: %s\n", e.Key, e.Value)
	}
	return 0
}
