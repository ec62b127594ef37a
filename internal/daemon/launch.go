package daemon

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The child finds its configuration, its report pipe and the exec watch (read end
// of a pipe the parent holds open until it execs) at these descriptors.
const (
	configFD    = 3
	reportFD    = 4
	execWatchFD = 5
)

// EventKind is what the daemon tells its parent.
type EventKind string

const (
	EventReady EventKind = "ready" // Text: the device, e.g. "nbd0"
	EventRetry EventKind = "retry" // Text: why the last attempt failed; it tries again
	EventFatal EventKind = "fatal" // Text: why it gave up (or a permanent error, like a refused login)

	// eventUp is between the serving process and its supervisor only: its signal
	// handlers are in place, so a signal forwarded now no longer kills it.
	eventUp EventKind = "up"
)

// Event is one report line from the daemon.
type Event struct {
	Kind EventKind
	Text string
}

// Child is a started daemon.
type Child struct {
	Cmd *exec.Cmd
	// Events carries the daemon's reports; it is closed when the daemon closes its end
	// (after it is ready) or exits.
	Events <-chan Event
	cfgW   *os.File
	// execW is the write end of the exec watch, a bare descriptor (no finalizer may
	// close it) with close-on-exec: the child reads EOF when the parent execs.
	execW int
}

// Start runs exe as the "@isboot" daemon in its own session and returns at once; the
// daemon prepares itself (mlockall) and waits for Send. Starting it before the
// network is up hides that start-up behind the network's. console receives the
// daemon's stdout and stderr.
//
// The child is started already prepared where the caller may (PID 1 can): forked from
// a thread with PR_SET_IO_FLUSHER and exec'd through a path named isboot, it inherits
// the flag and the name, so it need not re-exec itself (prepareProcess). Under
// emulation a Go start-up costs a tenth of a second of the boot's one CPU.
func Start(exe string, console *os.File) (*Child, error) {
	type started struct {
		c   *Child
		err error
	}
	done := make(chan started, 1)
	go func() {
		// Never unlocked: the thread that carries the flag ends with this goroutine
		// instead of going back to the caller's pool.
		runtime.LockOSThread()
		_ = unix.Prctl(prSetIOFlusher, 1, 0, 0, 0) // without it the child sets it itself
		path := exe
		if filepath.Base(exe) != Name {
			if p, err := namedPath(); err == nil {
				path = p
				defer removeExecLink() // the child has exec'd when start returns
			}
		}
		c, err := start(path, console, &syscall.SysProcAttr{Setsid: true})
		done <- started{c, err}
	}()
	r := <-done
	return r.c, r.err
}

func start(exe string, console *os.File, sys *syscall.SysProcAttr) (*Child, error) {
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("daemon: pipe: %w", err)
	}
	evR, evW, err := os.Pipe()
	if err != nil {
		cfgR.Close()
		cfgW.Close()
		return nil, fmt.Errorf("daemon: pipe: %w", err)
	}
	var watch [2]int
	if err := unix.Pipe2(watch[:], unix.O_CLOEXEC); err != nil {
		cfgR.Close()
		cfgW.Close()
		evR.Close()
		evW.Close()
		return nil, fmt.Errorf("daemon: pipe: %w", err)
	}
	watchR := os.NewFile(uintptr(watch[0]), "exec watch")
	cmd := &exec.Cmd{
		Path:        exe,
		Args:        []string{Argv0},
		Env:         []string{}, // nothing inherited; nothing secret goes here either
		Stdout:      console,
		Stderr:      console,
		ExtraFiles:  []*os.File{cfgR, evW, watchR}, // fds 3, 4 and 5
		SysProcAttr: sys,
	}
	err = cmd.Start()
	cfgR.Close()
	evW.Close()
	watchR.Close()
	if err != nil {
		cfgW.Close()
		evR.Close()
		unix.Close(watch[1])
		return nil, fmt.Errorf("daemon: start %s: %w", exe, err)
	}
	events := make(chan Event, 16)
	go readEvents(evR, events)
	return &Child{Cmd: cmd, Events: events, cfgW: cfgW, execW: watch[1]}, nil
}

// Send hands the daemon its configuration, secrets included, over the pipe.
func (c *Child) Send(cfg *Config) error {
	// The pipe holds 64 KiB, far more than a config, so this does not block.
	err := cfg.encode(c.cfgW)
	c.cfgW.Close()
	if err != nil {
		return fmt.Errorf("daemon: send config: %w", err)
	}
	return nil
}

// Cancel tells a daemon that got no configuration that there is nothing to serve: it
// exits quietly.
func (c *Child) Cancel() {
	c.cfgW.Close()
}

func readEvents(r io.ReadCloser, out chan<- Event) {
	defer close(out)
	defer r.Close()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		kind, text, _ := strings.Cut(sc.Text(), " ")
		out <- Event{Kind: EventKind(kind), Text: text}
	}
}

// reporter is the child's end of the report pipe. Writes never block: a parent that
// stopped reading (it went to the rescue shell, or exec'd the real init) must not stall
// the daemon, so a report that does not fit is dropped. After ready it is closed.
type reporter struct {
	fd int // -1: closed
}

func newReporter(fd int) *reporter {
	if err := unix.SetNonblock(fd, true); err != nil {
		return &reporter{fd: -1}
	}
	unix.CloseOnExec(fd)
	return &reporter{fd: fd}
}

func (r *reporter) send(kind EventKind, text string) {
	if r == nil || r.fd < 0 {
		return
	}
	text = strings.NewReplacer("\n", " ", "\r", " ").Replace(text)
	if _, err := unix.Write(r.fd, []byte(string(kind)+" "+text+"\n")); err != nil && err != unix.EAGAIN {
		r.close() // EPIPE: nobody listens any more
	}
}

func (r *reporter) close() {
	if r != nil && r.fd >= 0 {
		unix.Close(r.fd)
		r.fd = -1
	}
}
