package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/internal/klog"
	"github.com/isboot/isboot/internal/nbd"
)

// prctl options (linux/prctl.h) that x/sys does not name yet.
const (
	prSetIOFlusher = 57
	prGetIOFlusher = 58
)

// Main is the "@isboot" role, in either of its two processes. PID 1 starts the
// supervisor (argv "@isboot"), which starts the serving process ("@isboot serve")
// and a new one whenever that one dies (supervise_linux.go). Both prepare
// themselves the same way to live on under the root they serve. It returns the exit
// code.
func Main(dial Dialer, version string) int {
	return mainWith(dial, version, nil)
}

// mainWith is Main with the NBD attachment replaceable (nil: nbd.Attach), for tests.
func mainWith(dial Dialer, version string, attach func(*nbd.Server, nbd.AttachConfig) (Attachment, error)) int {
	if err := prepareProcess(); err != nil {
		// Without PR_SET_IO_FLUSHER, memory reclaim may wait on writeback to our own
		// device: a deadlock under pressure, but not a reason to leave the root
		// unserved. Without the name, ps shows "init" or "exe".
		fmt.Fprintf(os.Stderr, "isboot: warning: %v\n", err)
	}
	// MCL_ONFAULT: lock pages as they are touched; without it the Go heap's reserved
	// address space would be populated (tens of MiB) up front.
	if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT); err != nil {
		fmt.Fprintf(os.Stderr, "isboot: warning: mlockall: %v\n", err)
	}
	// Inherited by the serving processes, which set it again where /proc allows.
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte("-1000\n"), 0); err != nil {
		fmt.Fprintf(os.Stderr, "isboot: warning: oom_score_adj: %v\n", err)
	}
	if len(os.Args) > 1 && os.Args[1] == ServeArg {
		return serveMain(dial, version, attach)
	}
	return superviseMain(version)
}

// servingGCPercent is the serving process's GOGC once it serves. Every page it
// touches stays locked (mlockall), so the heap's high-water mark is its RSS for
// good, and Go's default lets the heap reach twice what is live. While serving it
// allocates almost nothing (the I/O buffers are pooled), so collecting sooner costs
// next to no CPU: in the TCG guest the peak RSS went from 15.8-17.4 MiB to 14.1 MiB.
// Before that, the login and the attach allocate, on the boot's critical path, and
// keep the default.
const servingGCPercent = 25

// serveMain is the serving process: it reads its configuration from fd 3 and serves
// until shut down. It exits 0 after a requested stop, exitGaveUp when it never
// served and cannot (a refused login), anything else on failure.
func serveMain(dial Dialer, version string, attach func(*nbd.Server, nbd.AttachConfig) (Attachment, error)) int {
	rep := newReporter(reportFD)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, append([]os.Signal{FinalSignal}, ShutdownSignals...)...)
	// systemd's shutdown SIGSTOPs and SIGCONTs everything; SIGHUP comes when the
	// console session ends. Neither should end the daemon.
	signal.Ignore(unix.SIGHUP, unix.SIGPIPE)
	rep.send(eventUp, "") // signals now reach Run: the supervisor may forward them
	// Closed through its *os.File: closing the bare descriptor would leave the
	// File's finalizer to close fd 3 again at some later GC, by then the next file
	// opened (the kernel log), which then goes silent.
	cfgFile := os.NewFile(configFD, "config")
	cfg, err := decodeConfig(cfgFile)
	cfgFile.Close()
	if err == errNoConfig {
		return 0
	}
	if err != nil {
		rep.send(EventFatal, err.Error())
		fmt.Fprintf(os.Stderr, "isboot: %v\n", err)
		return exitGaveUp
	}
	if cfg.Version == "" {
		cfg.Version = version
	}
	LimitProcs(1)
	if cfg.Root != "" {
		// The supervisor started us before it built its root: join it.
		if err := joinRoot(cfg.Root); err != nil {
			fmt.Fprintf(os.Stderr, "isboot: warning: daemon root %s: %v\n", cfg.Root, err)
		}
	}
	log := klog.Open("isboot", cfg.Debug)
	devDir, _ := os.Open("/dev") // held: switch_root moves /dev away from our root
	err = Run(context.Background(), cfg, Options{
		Dial:   dial,
		Attach: attach,
		Logf:   log.Printf,
		Report: func(e Event) {
			if e.Kind == EventReady {
				debug.SetGCPercent(servingGCPercent)
			}
			rep.send(e.Kind, e.Text)
			if e.Kind != EventRetry {
				rep.close()
			}
		},
		Signals:     sigs,
		InUse:       func(dev string) bool { return devDir != nil && inUse(devDir, dev) },
		FollowQueue: true,
	})
	switch {
	case err == nil:
		return 0
	case errors.As(err, new(stopError)):
		log.Errorf("%v", err)
		return 0 // asked to stop: the supervisor must not start another
	default:
		log.Errorf("%v", err)
		return exitGaveUp
	}
}

// prepareProcess makes every thread an I/O flusher named Name, re-exec'ing once if
// need be; it returns (with a warning) when that is impossible.
//
// PR_SET_IO_FLUSHER is per thread and inherited by threads created later, but the Go
// runtime has started threads before main: so it is set on a locked thread, which
// then re-execs. After exec that thread is the only one, and every runtime thread
// inherits the flag and the name from it. The exec goes through a path ending in
// "isboot" (execNamed), so the name is right even when the flag cannot be set
// (no CAP_SYS_RESOURCE); a process already named so does not exec again for it.
func prepareProcess() error {
	// Exec'd through the link, the name is as good as it gets: never exec again for
	// it (whatever the kernel made of the path), so this cannot loop.
	viaLink := removeExecLink()
	flusher, named := IOFlusher(), viaLink || ProcessName() == Name
	if flusher && named {
		return nil
	}
	runtime.LockOSThread()
	var flagErr error
	if !flusher {
		if err := unix.Prctl(prSetIOFlusher, 1, 0, 0, 0); err != nil {
			flagErr = fmt.Errorf("PR_SET_IO_FLUSHER: %w", err)
			if named {
				runtime.UnlockOSThread()
				return flagErr
			}
		}
	}
	// argv (with its '@'), environment and fds 3 and 4 pass through unchanged.
	err := execNamed(os.Args, os.Environ())
	runtime.UnlockOSThread()
	return errors.Join(flagErr, fmt.Errorf("re-exec: %w", err))
}

// IOFlusher reports whether the calling thread has PR_SET_IO_FLUSHER.
func IOFlusher() bool {
	v, err := unix.PrctlRetInt(prGetIOFlusher, 0, 0, 0, 0)
	return err == nil && v == 1
}

// inUse reports whether the kernel still holds dev or one of its partitions: an
// exclusive open fails with EBUSY while a filesystem is mounted on it. It works
// through the /dev handle taken at start, since /dev is elsewhere after switch_root.
func inUse(devDir *os.File, dev string) bool {
	names := []string{dev}
	for i := 1; i <= 16; i++ {
		names = append(names, dev+"p"+strconv.Itoa(i))
	}
	for _, n := range names {
		fd, err := unix.Openat(int(devDir.Fd()), n, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err == unix.EBUSY {
			return true
		}
		if err == nil {
			unix.Close(fd)
		}
	}
	return false
}
