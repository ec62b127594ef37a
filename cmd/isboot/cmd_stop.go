package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/isboot/isboot/internal/daemon"
	"github.com/isboot/isboot/internal/status"
)

func init() {
	register("stop", "ask the serving daemon to flush, disconnect and log out (only once the device is unused)", runStop)
}

func runStop(args []string) int {
	fs := flag.NewFlagSet("stop", flag.ContinueOnError)
	path := fs.String("file", status.DefaultPath, "status file naming the daemon")
	wait := fs.Duration("timeout", 30*time.Second, "how long to wait for the daemon to finish")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	f, err := os.Open(*path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "isboot stop: %v\n", err)
		return 1
	}
	kv, err := status.Parse(f)
	f.Close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "isboot stop: %v\n", err)
		return 1
	}
	var pid int
	var dev string
	for _, e := range kv {
		switch e.Key {
		case "net.isboot.pid":
			pid, _ = strconv.Atoi(e.Value)
		case "net.isboot.device":
			dev = e.Value
		}
	}
	// Only ever signal the daemon itself, never whatever reused a stale pid.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if pid <= 0 || err != nil || !bytes.HasPrefix(cmdline, []byte(daemon.Argv0+"\x00")) {
		fmt.Fprintf(os.Stderr, "isboot stop: no %s daemon running (pid %d from %s)\n", daemon.Argv0, pid, *path)
		return 1
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		fmt.Fprintf(os.Stderr, "isboot stop: signal pid %d: %v\n", pid, err)
		return 1
	}
	for end := time.Now().Add(*wait); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if syscall.Kill(pid, 0) == syscall.ESRCH || isZombie(pid) {
			fmt.Printf("isboot: daemon (pid %d) stopped: /dev/%s disconnected, logged out\n", pid, dev)
			return 0
		}
	}
	fmt.Fprintf(os.Stderr, "isboot stop: daemon (pid %d) still serving /dev/%s after %v: the device is in use (unmount it first)\n", pid, dev, *wait)
	return 1
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
