// Package childproc starts helper processes (QEMU, tgtd, istgt, qemu-nbd) that must
// die with us. Linux sends a child's Pdeathsig when the *thread* that forked it ends,
// not the process, and the Go runtime ends a thread whose locked goroutine exits. So a
// child forked from an ordinary goroutine can be killed at any time, by an unrelated
// goroutine that happened to run on that thread, locked it and exited. Start forks
// from a goroutine locked to its own thread for the child's whole life.
package childproc

import (
	"os/exec"
	"runtime"
	"syscall"
)

// Child is a started process; Done closes once it has been reaped.
type Child struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start starts cmd with Pdeathsig SIGKILL (keeping its other SysProcAttr settings).
func Start(cmd *exec.Cmd) (*Child, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	c := &Child{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			runtime.UnlockOSThread()
			return
		}
		started <- nil
		c.err = cmd.Wait()
		close(c.done)
		// Exiting still locked retires the thread, which is right: no other
		// goroutine ran on it, so the only child it guarded is gone.
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return c, nil
}

// Done closes when the child has exited and been reaped.
func (c *Child) Done() <-chan struct{} { return c.done }

// Err is cmd.Wait's result; valid once Done is closed.
func (c *Child) Err() error { return c.err }

// Pid is the child's process id (and process group id, with Setpgid).
func (c *Child) Pid() int { return c.cmd.Process.Pid }
