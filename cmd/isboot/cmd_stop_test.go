package main

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/status"
)

// startFakeDaemon runs script under sh with argv[0] "@isboot", as the daemon runs.
func startFakeDaemon(t *testing.T, script string) *exec.Cmd {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	cmd := &exec.Cmd{Path: sh, Args: []string{"@isboot", "-c", script}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	go cmd.Wait() // reap it as soon as it exits
	time.Sleep(100 * time.Millisecond)
	return cmd
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
	d := startFakeDaemon(t, "sleep 30; true") // "; true": no exec of sleep in place of sh
	out, code := runSelf(t, "stop", "--file", writeStatus(t, d.Process.Pid), "--timeout", "5s")
	if code != 0 || !strings.Contains(out, "stopped: /dev/nbd3") {
		t.Errorf("exit %d: %s", code, out)
	}
	// A daemon that keeps serving (device in use) is reported, not killed.
	d = startFakeDaemon(t, "trap '' TERM; sleep 30 & wait; sleep 30")
	out, code = runSelf(t, "stop", "--file", writeStatus(t, d.Process.Pid), "--timeout", "500ms")
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
