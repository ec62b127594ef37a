package initproc

import (
	"github.com/isboot/isboot/internal/status"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// shells are tried in order; the initramfs builder puts one of them in.
var shells = [][]string{
	{"/bin/gosh"},
	{"/bin/sh"},
	{"/bin/busybox", "sh"},
}

// rescueShell runs an interactive shell on the console and returns when it exits.
// It reports false when the initramfs has no shell.
func (b *boot) rescueShell() bool {
	for _, argv := range shells {
		if _, err := os.Stat(argv[0]); err != nil {
			continue
		}
		con, err := os.OpenFile("/dev/console", os.O_RDWR, 0)
		if err != nil {
			b.log.Errorf("rescue shell: %v", err)
			return false
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = con, con, con
		cmd.Env = []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/", "TERM=linux", "PS1=isboot rescue# "}
		// Its own session with the console as controlling terminal, so ^C works.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		t0 := time.Now()
		err = cmd.Run()
		con.Close()
		if err != nil {
			b.log.Warnf("rescue shell %s: %v", argv[0], err)
		}
		if time.Since(t0) < 2*time.Second {
			time.Sleep(2 * time.Second) // a console without input ends the shell at once: never spin
		}
		return true
	}
	return false
}

// rescue is where every failure ends: one line saying what failed, then a shell for
// as long as the machine runs. PID 1 must never exit (the kernel would panic).
func (b *boot) rescue(err error) {
	b.log.Errorf("boot failed: %v", err)
	b.setState(status.Failed, err.Error())
	if b.child != nil && !b.sent {
		b.child.Cancel() // nothing to serve: let it exit
	}
	for {
		b.log.Infof("starting the rescue shell (isboot status, dmesg and ip may help)")
		if !b.rescueShell() {
			b.log.Errorf("no shell in the initramfs: halted (the daemon, if started, keeps serving)")
			for {
				time.Sleep(time.Hour)
			}
		}
	}
}
