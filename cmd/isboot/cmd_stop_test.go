package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/status"
)

// startFakeDaemon runs script under sh with argv[0] "@isboot", as the daemon runs,
// and returns once the script has touched $READY (after its traps are set: a
// fixed pause could end before them on a loaded machine).
func startFakeDaemon(t *testing.T, script string) *exec.Cmd {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	ready := filepath.Join(t.TempDir(), "ready")
	cmd := &exec.Cmd{Path: sh, Args: []string{"@isboot", "-c", script}, Env: append(os.Environ(), "READY="+ready)}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	go cmd.Wait() // reap it as soon as it exits
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(ready); err == nil {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatal("the fake daemon did not start")
		}
	}
}

func writeStatus(t *testing.T, pid int) string {
	t.Helper()
	dir := t.TempDir()
	w, err := status.NewWriter(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Write(&status.Status{PID: pid, Device: "nbd3", State: status.Serving}); err != nil {
		t.Fatal(err)
	}
	return dir + "/status"
}

func TestStop(t *testing.T) {
	d := startFakeDaemon(t, ": >$READY; sleep 30; true") // "; true": no exec of sleep in place of sh
	out, code := runSelf(t, "stop", "--file", writeStatus(t, d.Process.Pid), "--wait", "5s")
	if code != 0 || !strings.Contains(out, "stopped: /dev/nbd3") {
		t.Errorf("exit %d: %s", code, out)
	}
	// A daemon that keeps serving (device in use) is reported, not killed.
	d = startFakeDaemon(t, "trap '' TERM; : >$READY; sleep 30 & wait; sleep 30")
	out, code = runSelf(t, "stop", "--file", writeStatus(t, d.Process.Pid), "--wait", "500ms")
	if code != 1 || !strings.Contains(out, "still serving /dev/nbd3") {
		t.Errorf("exit %d: %s", code, out)
	}
	// A pid that is not the daemon is never signalled.
	other := exec.Command("sleep", "30")
	other.Start()
	defer other.Process.Kill()
	out, code = runSelf(t, "stop", "--file", writeStatus(t, other.Process.Pid))
	if code != 1 || !strings.Contains(out, "no @isboot daemon running") {
		t.Errorf("exit %d: %s", code, out)
	}
}

// --final: the daemon's SIGUSR1 answer is a logged-out status with the device kept
// (the root still mounted read-only), or its exit (an unused device).
func TestStopFinal(t *testing.T) {
	st := filepath.Join(t.TempDir(), "status")
	d := startFakeDaemon(t, `trap 'printf "net.isboot.pid: %s\nnet.isboot.device: nbd3\nnet.isboot.state: logged-out\n" $$ > `+st+`' USR1; : >$READY; sleep 30 & wait; sleep 30 & wait`)
	if err := os.WriteFile(st, []byte(fmt.Sprintf("net.isboot.pid: %d\nnet.isboot.device: nbd3\nnet.isboot.state: serving\n", d.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := runSelf(t, "stop", "--final", "--file", st, "--wait", "5s")
	if code != 0 || !strings.Contains(out, "logged out; /dev/nbd3 stays attached") {
		t.Errorf("exit %d: %s", code, out)
	}
	// A daemon whose device is unused stops (it exits).
	d = startFakeDaemon(t, "trap 'exit 0' USR1; : >$READY; sleep 30 & wait; sleep 30")
	out, code = runSelf(t, "stop", "--final", "--file", writeStatus(t, d.Process.Pid), "--wait", "5s")
	if code != 0 || !strings.Contains(out, "stopped: /dev/nbd3") {
		t.Errorf("exit %d: %s", code, out)
	}
}
