package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/isboot/isboot/internal/status"
)

func init() { register("status", "print the boot daemon's status (/run/isboot/status)", runStatus) }

func runStatus(args []string) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print one JSON object")
	path := fs.String("file", status.DefaultPath, "status file to read")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "isboot status: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	f, err := os.Open(*path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "isboot status: %v (is isboot serving this system?)\n", err)
		return 1
	}
	defer f.Close()
	kv, err := status.Parse(f)
	if err != nil {
		fmt.Fprintf(os.Stderr, "isboot status: %s: %v\n", *path, err)
		return 1
	}
	if *asJSON {
		os.Stdout.Write(status.JSON(kv))
		return 0
	}
	for _, e := range kv {
		fmt.Printf("%s: %s\n", e.Key, e.Value)
	}
	return 0
}
