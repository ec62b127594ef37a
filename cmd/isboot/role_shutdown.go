package main

import (
	"os"
	"path/filepath"
)

// Run by systemd-shutdown from /usr/lib/systemd/system-shutdown/ (a link to the
// binary there), isboot is the shutdown's last word to the daemon: systemd-shutdown
// runs those programs, with argv[1] poweroff, reboot, halt or kexec, once every
// filesystem is unmounted or read-only and just before the machine goes down. The
// daemon flushes and logs out, so that the target sees a Logout instead of a
// connection that vanishes (isboot stop --final).
func init() {
	roleHooks = append(roleHooks, func() bool {
		if len(os.Args) == 0 || filepath.Base(filepath.Dir(os.Args[0])) != "system-shutdown" {
			return false
		}
		os.Exit(stopMain([]string{"--final", "--wait", "10s"}, os.Stdout, os.Stderr))
		return true
	})
}
