package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/isboot/isboot/internal/daemon"
	"github.com/isboot/isboot/internal/status"
)

func init() {
	register("stop", "ask the serving daemon to flush, disconnect and log out (only once the device is unused; --final at shutdown)", func(args []string) int {
		return stopMain(args, os.Stdout, os.Stderr)
	})
}

func stopMain(args []string, stdout, stderr io.Writer) int {
	c := newCLI("stop", "[--file PATH] [--wait DURATION] [--final]", stdout, stderr)
	path := c.String("file", status.DefaultPath, statusFileUsage)
	wait := c.Duration("wait", 30*time.Second, "how long to wait for the daemon to finish")
	final := c.Bool("final", false, "the system is going down and the root is read-only or unmounted (systemd-shutdown's hook, an exitrd): "+
		"log out now; a device still mounted stays attached, and a read then logs in again")
	if code := c.parse(args); code >= 0 {
		return code
	}
	kv, err := status.ReadFile(*path)
	if err != nil {
		return c.fail(err)
	}
	pid, _ := strconv.Atoi(status.Value(kv, "net.isboot.pid"))
	dev := status.Value(kv, "net.isboot.device")
	// Only ever signal the daemon itself, never whatever reused a stale pid.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if pid <= 0 || err != nil || !bytes.HasPrefix(cmdline, []byte(daemon.Argv0+"\x00")) {
		return c.fail(fmt.Errorf("no %s daemon running (pid %d from %s)", daemon.Argv0, pid, *path))
	}
	sig := syscall.SIGTERM
	if *final {
		sig = daemon.FinalSignal
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return c.fail(fmt.Errorf("signal pid %d: %w", pid, err))
	}
	for end := time.Now().Add(*wait); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if syscall.Kill(pid, 0) == syscall.ESRCH || isZombie(pid) {
			fmt.Fprintf(stdout, "isboot: daemon (pid %d) stopped: /dev/%s disconnected, logged out\n", pid, dev)
			return 0
		}
		if *final && loggedOut(*path, pid) {
			fmt.Fprintf(stdout, "isboot: daemon (pid %d) flushed and logged out; /dev/%s stays attached\n", pid, dev)
			return 0
		}
	}
	if *final {
		return c.fail(fmt.Errorf("daemon (pid %d) did not log out in %v", pid, *wait))
	}
	return c.fail(fmt.Errorf("daemon (pid %d) still serving /dev/%s after %v: the device is in use (unmount it first)", pid, dev, *wait))
}

// loggedOut reports whether the status file says that pid logged out (--final).
func loggedOut(path string, pid int) bool {
	kv, err := status.ReadFile(path)
	return err == nil && status.Value(kv, "net.isboot.pid") == strconv.Itoa(pid) &&
		status.Value(kv, "net.isboot.state") == string(status.LoggedOut)
}

// isZombie reports a process that exited but was not reaped yet (its parent is
// PID 1, which may be busy).
func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'Z'
}
