package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/internal/initproc"
)

func init() {
	register("initramfs", "in a distribution's initramfs (initramfs-tools, dracut): attach the boot LUN as /dev/nbd0, leave the daemon serving, return", runInitramfs)
}

func runInitramfs(args []string) int {
	return initramfsMain(args, os.Stdout, os.Stderr)
}

func initramfsMain(args []string, stdout, stderr io.Writer) int {
	c := newCLI("initramfs", "[--check] [--find-root] [--host NAME]", stdout, stderr)
	check := c.Bool("check", false, "only say whether this machine boots through isboot (an iBFT or netroot=iscsi:, and no isboot=off):\nexit 0 if so, 1 if not; changes nothing")
	findRoot := c.Bool("find-root", false, "also find the root filesystem (root=, else the LUN's first Linux filesystem) and print its device")
	host := c.String("host", "", "whose initramfs runs isboot (initramfs-tools, dracut), for the log")
	if code := c.parse(args); code >= 0 {
		return code
	}
	if *check {
		why, ok := initproc.Detect()
		fmt.Fprintf(stdout, "isboot: %s\n", why)
		if !ok {
			return 1
		}
		return 0
	}
	if err := inInitramfs(); err != nil {
		return c.fail(err)
	}
	a, err := initproc.Attach(Version, initproc.AttachOptions{Host: *host, FindRoot: *findRoot})
	if err != nil {
		return c.fail(err)
	}
	if *findRoot {
		fmt.Fprintln(stdout, a.Root)
	}
	return 0
}

// inInitramfs refuses to run on a booted system, where configuring the boot NIC and
// attaching /dev/nbd0 would disturb a running machine: the root of an initramfs is
// a ramfs or tmpfs.
func inInitramfs() error {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return fmt.Errorf("statfs /: %w", err)
	}
	switch st.Type {
	case unix.RAMFS_MAGIC, unix.TMPFS_MAGIC:
		return nil
	}
	return errors.New("not in an initramfs (/ is not a ramfs or tmpfs): run from an initramfs-tools or dracut boot script")
}
