package childproc

import (
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// startFromRetiredThread runs start on a goroutine locked to its thread that then
// exits still locked, so the Go runtime ends that thread, as any locked goroutine
// elsewhere in the process may do to the thread a child was forked from.
func startFromRetiredThread(t *testing.T, start func() (<-chan struct{}, func())) (<-chan struct{}, func()) {
	type res struct {
		done <-chan struct{}
		kill func()
	}
	got := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		d, k := start()
		got <- res{d, k}
	}()
	r := <-got
	t.Cleanup(r.kill)
	return r.done, r.kill
}

func TestChildOutlivesItsCallersThread(t *testing.T) {
	if _, err := exec.LookPath("sleep"); err != nil {
		t.Skip("no sleep(1) to run as the child")
	}
	// The premise: a child forked on a thread that ends gets its Pdeathsig. (The
	// runtime never ends the main thread, so a try that lands there proves nothing.)
	premise := false
	for try := 0; try < 5 && !premise; try++ {
		plain, _ := startFromRetiredThread(t, func() (<-chan struct{}, func()) {
			cmd := exec.Command("sleep", "30")
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			return done, func() { cmd.Process.Kill() }
		})
		select {
		case <-plain:
			premise = true
		case <-time.After(2 * time.Second):
		}
	}
	if !premise {
		t.Skip("5 tries landed on a thread the runtime keeps: cannot show the hazard here")
	}
	// Start forks on a thread of its own that lives as long as the child.
	started, _ := startFromRetiredThread(t, func() (<-chan struct{}, func()) {
		c, err := Start(exec.Command("sleep", "30"))
		if err != nil {
			t.Fatal(err)
		}
		return c.Done(), func() { c.cmd.Process.Kill(); <-c.Done() }
	})
	select {
	case <-started:
		t.Fatal("the child from Start died with its caller's thread")
	case <-time.After(300 * time.Millisecond):
	}
}
