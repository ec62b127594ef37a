package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/status"
)

// buildIsboot builds this command as dir/name, as a user runs it.
func buildIsboot(t *testing.T, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// `isboot serve` is observable like the boot daemon: every thread is named isboot,
// it publishes the status file at --status, `isboot status --file` reads it, and a
// stop is recorded there.
func TestServePublishesStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary: skipped under -short")
	}
	bin := buildIsboot(t, "isboot")
	dir := t.TempDir()
	sock, st := filepath.Join(dir, "nbd.sock"), filepath.Join(dir, "run", "status")
	cmd := exec.Command(bin, "serve", "--mem", "4M", "--listen", "unix:"+sock, "--status", st)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pid := cmd.Process.Pid
	var kv []status.KV
	for deadline := time.Now().Add(20 * time.Second); status.Value(kv, "net.isboot.state") != "serving"; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no serving state in %s: %v", st, kv)
		}
		kv, _ = status.ReadFile(st)
	}
	if got := status.Value(kv, "net.isboot.pid"); got != strconv.Itoa(pid) {
		t.Errorf("net.isboot.pid = %q, want %d", got, pid)
	}
	comms, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/comm")
	if len(comms) < 2 {
		t.Errorf("%d threads, want the Go runtime's several", len(comms))
	}
	for _, c := range comms {
		if b, err := os.ReadFile(c); err == nil && string(b) != "isboot\n" {
			t.Errorf("%s = %q, want isboot", c, b)
		}
	}
	out, err := exec.Command(bin, "status", "--file", st).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "net.isboot.state: serving\n") || !strings.Contains(string(out), "net.isboot.size: 4194304\n") {
		t.Errorf("isboot status --file: %v\n%s", err, out)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("serve after SIGTERM: %v", err)
	}
	kv, _ = status.ReadFile(st)
	if status.Value(kv, "net.isboot.state") != "failed" || status.Value(kv, "net.isboot.last_error") != "stopped" {
		t.Errorf("status after stop: %v", kv)
	}
}

// The default status file is left alone while another live server publishes there
// (the boot daemon of the system serve runs on); --status given is obeyed.
func TestServeStatusPathOwner(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "status")
	other := exec.Command("sleep", "30")
	if err := other.Start(); err != nil {
		t.Skip(err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	dead := exec.Command("true")
	dead.Run()
	for _, tc := range []struct {
		name  string
		pid   int
		state status.State
		given bool
		want  string
	}{
		{"no file yet", 0, "", false, path},
		{"a live server's", other.Process.Pid, status.Serving, false, ""},
		{"a live server's, --status given", other.Process.Pid, status.Serving, true, path},
		{"a stopped server's", other.Process.Pid, status.Failed, false, path},
		{"a dead server's", dead.Process.Pid, status.Serving, false, path},
		{"our own", os.Getpid(), status.Serving, false, path},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(path)
			if tc.pid != 0 {
				w, err := status.Create(path)
				if err != nil {
					t.Fatal(err)
				}
				w.Write(&status.Status{PID: tc.pid, State: tc.state})
				w.Close()
			}
			var logs []string
			cfg := &serveConfig{status: path, statusGiven: tc.given}
			got := cfg.statusPath(func(f string, a ...any) { logs = append(logs, f) })
			if got != tc.want || (got == "") != (len(logs) == 1) {
				t.Errorf("statusPath = %q (log %q), want %q", got, logs, tc.want)
			}
		})
	}
}
