package initproc

import (
	"fmt"
	"os"
	"os/exec"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/isboot/isboot/internal/klog"
	"github.com/isboot/isboot/internal/status"
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
	cmd, con, ok := b.startShell()
	if !ok {
		return false
	}
	t0 := time.Now()
	err := cmd.Wait()
	con.Close()
	if err != nil {
		b.log.Warnf("rescue shell %s: %v", cmd.Path, err)
	}
	if time.Since(t0) < 2*time.Second {
		time.Sleep(2 * time.Second) // a console without input ends the shell at once: never spin
	}
	return true
}

// startShell starts the first shell the initramfs has on the console, in a session
// of its own; ok is false when there is none (or the console cannot be opened).
func (b *boot) startShell() (cmd *exec.Cmd, con *os.File, ok bool) {
	for _, argv := range shells {
		if _, err := os.Stat(argv[0]); err != nil {
			continue
		}
		con, err := os.OpenFile("/dev/console", os.O_RDWR, 0)
		if err != nil {
			b.log.Errorf("rescue shell: %v", err)
			return nil, nil, false
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = con, con, con
		cmd.Env = []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/", "TERM=linux", "PS1=isboot rescue# "}
		// Its own session with the console as controlling terminal, so ^C works.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		if err := cmd.Start(); err != nil {
			con.Close()
			b.log.Warnf("rescue shell %s: %v", argv[0], err)
			continue
		}
		return cmd, con, true
	}
	return nil, nil, false
}

// goSafe runs fn on a goroutine of its own that cannot take PID 1 down: a panic in
// any goroutine ends the process, and the kernel panics when init exits. The panic
// becomes a boot failure like any other (recoverInto).
func (b *boot) goSafe(name string, fn func()) {
	go func() {
		defer b.recoverInto(name)
		fn()
	}()
}

// recoverInto, deferred, turns a panic of the calling goroutine into a failure: its
// stack goes to the log, and "internal error in <name>" to the rescue path.
func (b *boot) recoverInto(name string) {
	r := recover()
	if r == nil {
		return
	}
	if b.log == nil { // before the logger opened
		b.log = klog.Open("isboot", 0)
	}
	b.log.Errorf("panic in %s: %v\n%s", name, r, debug.Stack())
	fail := b.onFail
	if fail == nil {
		fail = b.rescue
	}
	fail(fmt.Errorf("internal error in %s: %v", name, r))
}

// rescue is where every failure ends: one line saying what failed, then a shell for
// as long as the machine runs. PID 1 must never exit (the kernel would panic). The
// first failure owns the console for good: a later one (from another goroutine)
// waits here forever, and the boot steps stop at the next step (halted).
func (b *boot) rescue(err error) {
	b.halted.Store(true)
	b.rescuing.Lock() // never unlocked
	b.log.Errorf("boot failed: %v", err)
	b.setState(status.Failed, err.Error())
	if b.cmd != nil && b.cmd.OnFail.Reboot {
		b.reboot(b.cmd.OnFail.Delay) // returns only if the kernel refused
	}
	if b.child != nil && !b.sent {
		b.child.Cancel() // nothing to serve: let it exit
	}
	b.shellForever()
}

// shellForever runs rescue shells, one after the other, for as long as the machine
// runs.
func (b *boot) shellForever() {
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
