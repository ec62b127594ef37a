package daemon

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/nbd"
)

// supervisedName in the test binary's file name makes it play the real "@isboot"
// roles (supervisor and serving process) with a fake login and NBD attachment.
const supervisedName = "supervised"

func fakeDial(context.Context, *Config, func(string, ...any)) (Session, error) {
	s := &fakeSession{lun: blockdev.NewMem(1<<20, 512, false)}
	s.loggedIn.Store(true)
	return s, nil
}

func fakeAttach(*nbd.Server, nbd.AttachConfig) (Attachment, error) {
	a := &fakeAttachment{}
	a.live.Store(1)
	return a, nil
}

func TestRestartDelay(t *testing.T) {
	wait := minRestartWait
	var got []time.Duration
	for _, lived := range []time.Duration{time.Second, 2 * time.Second, 0, time.Minute, time.Second} {
		got = append(got, restartDelay(lived, &wait))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 0, time.Second}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("delays %v, want %v (quick deaths back off, a steady run restarts at once)", got, want)
	}
	for range 10 {
		restartDelay(0, &wait)
	}
	if wait != maxRestartWait {
		t.Errorf("back-off grew to %v, want it capped at %v", wait, maxRestartWait)
	}
}

// The supervisor PID 1 starts runs the serving process, forwards its ready, and
// replaces it within seconds each time it is SIGKILLed, even with the executable's
// file deleted (as switch_root deletes the initramfs); the status file names each
// new pid and counts the restarts. SIGTERM to the supervisor reaches the serving
// process, which stops; then the supervisor exits 0.
func TestSupervisorRestartsServingProcess(t *testing.T) {
	sup, dir := startSupervised(t, "", &syscall.SysProcAttr{Setsid: true})
	statusDir := filepath.Join(dir, "run")
	killTwice(t, sup, statusDir)
	stopSupervised(t, sup, statusDir)
}

// With Config.Root the daemon lives in a root of its own (proc, sys, dev and the
// status directory, in RAM): the serving processes run chrooted there, the status
// file reaches the real directory, and restarts work without the executable's file.
// Run in a mount namespace of its own, so its mounts go with it.
func TestSupervisorPrivateRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mounts, chroot)")
	}
	if self, _ := os.Executable(); dynamic(self) {
		t.Skip("the test binary is dynamically linked, and its loader is not in the daemon's root: run with CGO_ENABLED=0 (make test does)")
	}
	root := filepath.Join(t.TempDir(), "daemon-root")
	sup, dir := startSupervised(t, root, &syscall.SysProcAttr{Setsid: true, Unshareflags: syscall.CLONE_NEWNS})
	statusDir := filepath.Join(dir, "run")
	pid := waitPid(t, statusDir, 0)
	if got, _ := os.Readlink(fmt.Sprintf("/proc/%d/root", pid)); got != root {
		t.Errorf("the serving process's root is %q, want %q", got, root)
	}
	if got, _ := os.Readlink(fmt.Sprintf("/proc/%d/root", sup.Cmd.Process.Pid)); got != root {
		t.Errorf("the supervisor's root is %q, want %q", got, root)
	}
	killTwice(t, sup, statusDir)
	stopSupervised(t, sup, statusDir)
}

// A supervisor whose boot was given up before it had a configuration ends, and so
// does the serving process it had started ahead.
func TestSupervisorCancelBeforeConfig(t *testing.T) {
	sup, err := Start(supervisedExe(t, t.TempDir()), os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the serving process is started
	sup.Cancel()
	var got []Event
	for e := range sup.Events {
		got = append(got, e)
	}
	if err := sup.Cmd.Wait(); err != nil || len(got) != 0 {
		t.Errorf("exit %v, events %v; want a quiet exit", err, got)
	}
}

// startSupervised starts a copy of the test binary as the supervisor, hands it a
// configuration and waits for its ready; then it deletes the copy.
func startSupervised(t *testing.T, root string, sys *syscall.SysProcAttr) (*Child, string) {
	t.Helper()
	dir := t.TempDir()
	exe := supervisedExe(t, dir)
	sup, err := start(exe, os.Stderr, sys)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if kv, err := readStatusFile(filepath.Join(dir, "run")); err == nil {
			if pid, _ := strconv.Atoi(kv["net.isboot.pid"]); pid > 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		sup.Cmd.Process.Kill()
		sup.Cmd.Wait()
	})
	cfg := testConfig(filepath.Join(dir, "run"))
	cfg.Root = root
	if err := sup.Send(cfg); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-sup.Events:
		if e.Kind != EventReady || e.Text != "nbd7" {
			t.Fatalf("first event %v, want ready nbd7", e)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no ready from the supervised daemon")
	}
	if err := os.Remove(exe); err != nil {
		t.Fatal(err)
	}
	return sup, dir
}

func killTwice(t *testing.T, sup *Child, statusDir string) {
	t.Helper()
	pid := waitPid(t, statusDir, 0)
	checkServing(t, pid, sup.Cmd.Process.Pid, statusDir, 0)
	for restart := 1; restart <= 2; restart++ {
		t0 := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		next := waitPid(t, statusDir, pid)
		t.Logf("kill %d: pid %d replaced by %d, serving in %v", restart, pid, next, time.Since(t0).Round(time.Millisecond))
		if d := time.Since(t0); d > 10*time.Second {
			t.Errorf("the replacement took %v, want under 10 s", d)
		}
		checkServing(t, next, sup.Cmd.Process.Pid, statusDir, restart)
		pid = next
	}
}

func stopSupervised(t *testing.T, sup *Child, statusDir string) {
	t.Helper()
	if err := sup.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sup.Cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("supervisor after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the supervisor did not end after SIGTERM")
	}
	kv, err := readStatusFile(statusDir)
	if err != nil || kv["net.isboot.state"] != "failed" || kv["net.isboot.last_error"] != "stopped" {
		t.Errorf("status after the stop: %v %v", kv, err)
	}
}

// checkServing checks that pid is the serving process: named isboot with argv
// "@isboot serve", a child of the supervisor, published with the restart count.
func checkServing(t *testing.T, pid, supervisor int, statusDir string, restarts int) {
	t.Helper()
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	argv, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if string(comm) != Name+"\n" || string(argv) != Argv0+"\x00"+ServeArg+"\x00" {
		t.Errorf("pid %d: comm %q argv %q, want %q and %q", pid, comm, argv, Name, Argv0+" "+ServeArg)
	}
	if f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])); len(f) < 2 || f[1] != strconv.Itoa(supervisor) {
		t.Errorf("pid %d: parent %v, want the supervisor %d", pid, f, supervisor)
	}
	kv, _ := readStatusFile(statusDir)
	if kv["net.isboot.supervisor_pid"] != strconv.Itoa(supervisor) || kv["net.isboot.restarts"] != strconv.Itoa(restarts) {
		t.Errorf("status: supervisor_pid %q restarts %q, want %d and %d", kv["net.isboot.supervisor_pid"], kv["net.isboot.restarts"], supervisor, restarts)
	}
}

// waitPid waits for the status file to show a serving process other than old.
func waitPid(t *testing.T, statusDir string, old int) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		kv, err := readStatusFile(statusDir)
		if pid, _ := strconv.Atoi(kv["net.isboot.pid"]); err == nil && pid > 0 && pid != old && kv["net.isboot.state"] == "serving" {
			return pid
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no serving process but %d in %s", old, statusDir)
	return 0
}

func readStatusFile(dir string) (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ": "); ok {
			m[k] = v
		}
	}
	return m, nil
}

// supervisedExe copies the test binary into dir under a name that makes it play
// the daemon's real roles.
func supervisedExe(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, supervisedName+".test")
	if err := copyExe(self, exe); err != nil {
		t.Fatal(err)
	}
	return exe
}

// dynamic reports whether the executable at path needs a program interpreter.
func dynamic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}

func copyExe(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Until the process that started the supervisor execs or exits (PID 1 execs the real
// init), every serving process, a restarted one too, runs at bootNice on all its
// threads; afterwards new ones start at 0. The current one keeps its level: once it
// serves, its queue sets it (queuePriority), and this one serves no kernel device.
func TestServingProcessRaisedUntilTheBootEnds(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a negative nice value)")
	}
	sup, dir := startSupervised(t, "", &syscall.SysProcAttr{Setsid: true})
	statusDir := filepath.Join(dir, "run")
	pid := waitPid(t, statusDir, 0)
	if got := threadNices(t, pid); !allAre(got, bootNice) {
		t.Fatalf("serving process during the boot: nice %v, want %d on every thread", got, bootNice)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	pid = waitPid(t, statusDir, pid)
	if got := threadNices(t, pid); !allAre(got, bootNice) {
		t.Fatalf("serving process restarted during the boot: nice %v, want %d", got, bootNice)
	}
	if got := threadNices(t, sup.Cmd.Process.Pid); !allAre(got, 0) {
		t.Errorf("supervisor: nice %v, want 0", got)
	}
	unix.Close(sup.execW) // as PID 1's exec does
	sup.execW = -1
	time.Sleep(200 * time.Millisecond) // for the supervisor to see the exec
	if got := threadNices(t, pid); !allAre(got, bootNice) {
		t.Fatalf("serving process after the boot: nice %v, want %d kept", got, bootNice)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	pid = waitPid(t, statusDir, pid)
	if got := threadNices(t, pid); !allAre(got, 0) {
		t.Errorf("serving process restarted after the boot: nice %v, want 0", got)
	}
	stopSupervised(t, sup, statusDir)
}

// threadNices reads the nice value of each of pid's threads.
func threadNices(t *testing.T, pid int) []int {
	t.Helper()
	stats, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	var nices []int
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread ended
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		n, err := strconv.Atoi(f[16]) // field 19 of proc(5), counting from the state (3)
		if err != nil {
			t.Fatalf("%s: nice %q: %v", p, f[16], err)
		}
		nices = append(nices, n)
	}
	if len(nices) == 0 {
		t.Fatalf("pid %d: no threads", pid)
	}
	return nices
}

func allAre(nices []int, want int) bool {
	for _, n := range nices {
		if n != want {
			return false
		}
	}
	return true
}
