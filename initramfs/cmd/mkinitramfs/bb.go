package main

import (
	"fmt"
	"log"
	"os"

	"github.com/u-root/gobusybox/src/pkg/bb"
	"github.com/u-root/gobusybox/src/pkg/golang"
)

// rescueCommands are the u-root core commands of the rescue shell, compiled into one
// busybox-style binary (each command a symlink to bin/bb).
var rescueCommands = []string{
	"gosh", "ls", "cat", "ip", "mount", "umount", "dmesg", "ps", "mkdir", "rm", "cp", "mv",
	"ln", "echo", "grep", "hexdump", "kill", "ping", "sync", "shutdown", "poweroff",
	"free", "df", "lsmod", "insmod", "rmmod", "uname", "sleep", "chroot",
}

// buildBB compiles the rescue commands into out with u-root's gobusybox, resolving
// them from this module (so the u-root version is the one go.mod pins).
func buildBB(out string) error {
	paths := make([]string, len(rescueCommands))
	for i, c := range rescueCommands {
		paths[i] = "github.com/u-root/u-root/cmds/core/" + c
	}
	env := golang.Default(golang.DisableCGO(), golang.WithBuildTag("goshsmall")) // goshsmall: no line-editor dependency tree
	// -trimpath and no build ID: the same sources give the same bytes.
	opts := &bb.Opts{
		Env:          env,
		CommandPaths: paths,
		BinaryPath:   out,
		GoBuildOpts:  &golang.BuildOpts{}, // stripped and -trimpath: reproducible
	}
	if err := bb.BuildBusybox(log.New(os.Stderr, "mkinitramfs: bb: ", 0), opts); err != nil {
		return fmt.Errorf("build u-root commands: %w", err)
	}
	return nil
}
