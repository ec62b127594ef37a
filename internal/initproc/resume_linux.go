package initproc

// A login that times out is not the end of the boot: the daemon keeps trying, so
// when the target answers later the boot goes on (resume). isboot.onfail=reboot
// restarts the machine instead of any rescue shell (reboot).

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/internal/daemon"
)

// loginTimeout is waitDevice's error when isboot.timeout passed without a login.
type loginTimeout struct{ msg string }

func (e *loginTimeout) Error() string { return e.msg }

// resume is the rescue for a login that timed out, and reports whether the boot
// goes on. The daemon keeps trying, so the rescue shell starts with a banner saying
// that the boot goes on by itself as soon as the target answers (the shell then
// ends), and that leaving the shell waits for the target here; after another
// isboot.timeout without it the shell comes back. Any other failure, a daemon that
// gave up, or isboot.onfail=reboot is not resumable (false: rescue takes it).
func (b *boot) resume(err error) bool {
	var lt *loginTimeout
	if !errors.As(err, &lt) || b.child == nil || b.cmd != nil && b.cmd.OnFail.Reboot {
		return false
	}
	b.rescuing.Lock() // the console is the shell's; a later failure waits for it
	defer b.rescuing.Unlock()
	b.log.Errorf("boot failed: %v", err)
	for {
		ready, gaveUp := b.shellUntilReady()
		if ready {
			return true
		}
		if gaveUp {
			b.shellForever()
		}
		b.log.Infof("rescue shell left: waiting for %s", b.lunName())
		err := b.waitDevice()
		if err == nil {
			return true
		}
		if !errors.As(err, &lt) {
			b.log.Errorf("%v", err)
			b.shellForever()
		}
		b.log.Errorf("still %v", err)
	}
}

// shellUntilReady runs the rescue shell until it is left (both false), the daemon
// reports the LUN ready (ready: the shell is ended and the boot goes on) or gives up
// (gaveUp, once the shell was left). Without a shell it waits for the daemon.
func (b *boot) shellUntilReady() (ready, gaveUp bool) {
	what := b.lunName()
	b.log.Infof("the daemon keeps trying %s: the boot goes on by itself when the target answers (ending the rescue shell); leave the shell to wait for it here", what)
	b.log.Infof("starting the rescue shell (isboot status, dmesg and ip may help)")
	exited := make(chan struct{})
	cmd, con, ok := b.startShell()
	if ok {
		go func() {
			cmd.Wait()
			con.Close()
			close(exited)
		}()
	} else {
		b.log.Infof("no shell in the initramfs: waiting for %s", what)
	}
	t0 := time.Now()
	for {
		select {
		case e, open := <-b.child.Events:
			switch {
			case open && e.Kind == daemon.EventReady:
				b.device = e.Text
				b.log.Infof("the target answered: %s is /dev/%s (%.1f s after /init); the boot goes on", what, b.device, time.Since(b.start).Seconds())
				if ok {
					endShell(cmd, exited)
				}
				return true, false
			case open && e.Kind == daemon.EventRetry:
				continue
			case open:
				b.log.Errorf("the daemon gave up on %s: %s", what, e.Text)
			default:
				b.log.Errorf("the daemon exited before %s was ready", what)
			}
			if ok {
				<-exited
			}
			return false, true
		case <-exited:
			if time.Since(t0) < 2*time.Second {
				time.Sleep(2 * time.Second) // a console without input ends the shell at once: never spin
			}
			return false, false
		}
	}
}

// endShell ends the rescue shell's session: SIGHUP and SIGTERM, as when a terminal
// closes, and SIGKILL for what is left after two seconds.
func endShell(cmd *exec.Cmd, exited <-chan struct{}) {
	pg := -cmd.Process.Pid // its own session, so its own process group
	syscall.Kill(pg, syscall.SIGHUP)
	syscall.Kill(pg, syscall.SIGCONT)
	syscall.Kill(pg, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(2 * time.Second):
		syscall.Kill(pg, syscall.SIGKILL)
		<-exited
	}
}

// lunName is what the boot waits for, for messages.
func (b *boot) lunName() string {
	if b.plan == nil {
		return "the LUN"
	}
	return fmt.Sprintf("%s at %s", b.plan.Daemon.TargetName, strings.Join(b.plan.Daemon.Portals, ","))
}

// reboot is isboot.onfail=reboot: after delay seconds it stops the daemon (which
// logs out: nothing is mounted from its device yet) and restarts the machine. It
// returns only if the kernel refused.
func (b *boot) reboot(delay int) {
	b.log.Errorf("isboot.onfail=reboot: restarting the machine in %d s", delay)
	time.Sleep(time.Duration(delay) * time.Second)
	b.stopDaemon(10 * time.Second)
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	b.log.Errorf("reboot: %v; starting the rescue shell instead", err)
}

// stopDaemon ends the daemon before a reboot, waiting at most wait: one that never
// got a target exits at once, one that serves disconnects and logs out.
func (b *boot) stopDaemon(wait time.Duration) {
	if b.child == nil {
		return
	}
	if !b.sent {
		b.child.Cancel()
	} else if err := b.child.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		b.child.Cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(wait):
		b.log.Warnf("the daemon did not stop in %v; restarting anyway", wait)
	}
}
