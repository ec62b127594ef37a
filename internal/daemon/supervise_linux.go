package daemon

// The "@isboot" process PID 1 starts is a supervisor. It keeps the configuration in
// memory and runs the serving process ("@isboot serve") as its child; when that one
// dies (SIGKILL, a panic, the OOM killer despite oom_score_adj) it starts another,
// which takes the device back: a fresh iSCSI session, and RECONFIGURE with new
// sockets on the /dev/nbdN the kernel kept configured and waiting (nbd.Attach).
//
// The supervisor lives by the serving process's rules (argv[0] "@isboot", so
// systemd's shutdown spares it; oom_score_adj -1000; mlockall; PR_SET_IO_FLUSHER)
// and does next to nothing, so it has little reason to die itself. Its restart path
// reads no file of the root it serves, which the dead process was serving: it runs
// in a root of its own made of RAM filesystems before switch_root (Config.Root,
// root_linux.go), execs its own executable through a link to /proc/self/exe there
// (the running file, even once switch_root deleted it), and hands the configuration
// over a pipe on fd 3, as PID 1 did.

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/internal/klog"
)

// ServeArg is argv[1] of the serving process; the supervisor has none.
const ServeArg = "serve"

// exitGaveUp is the serving process's exit code when it never served and will not
// (a refused login, a device another server holds): the first one's supervisor
// then gives up with it, as the boot must stop and say why.
const exitGaveUp = 1

// Restart pacing: a serving process that lived at least steadyRun is replaced at
// once; one that died sooner waits a back-off from minRestartWait to maxRestartWait,
// so that a process dying at start cannot spin.
const (
	steadyRun      = 10 * time.Second
	minRestartWait = time.Second
	maxRestartWait = 30 * time.Second
)

// forwardSignals are passed on to the serving process: stop (SIGTERM, SIGINT) and
// the shutdown's final logout (SIGUSR1).
var forwardSignals = append([]os.Signal{FinalSignal}, ShutdownSignals...)

// superviseMain is the supervisor's main. It starts the first serving process at
// once, before its configuration arrives, so that the process's start-up hides
// behind PID 1's network setup as the daemon's own does.
func superviseMain(version string) int {
	rep := newReporter(reportFD)
	unix.CloseOnExec(execWatchFD) // the serving processes need no exec watch
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, forwardSignals...)
	signal.Ignore(unix.SIGHUP, unix.SIGPIPE)
	log := klog.Open("isboot", 0)
	s := &supervisor{logf: log.Printf, rep: rep, files: []*os.File{os.Stdin, os.Stdout, os.Stderr}}
	// Serving processes started before PID 1 execs the real init run raised
	// (bootnice_linux.go).
	s.boost.logf = log.Printf
	execSeen := watchExec()
	if execSeen != nil {
		s.boost.on = true
		go func() {
			<-execSeen.done
			s.boost.end()
		}()
	}
	var err error
	if s.exe, err = namedPath(); err != nil {
		s.exe = "/proc/self/exe" // works, named "exe"
	}
	first, err := s.spawn()
	removeExecLink() // the exec is done; later ones go through the daemon's root
	if err != nil {
		s.logf("supervisor: cannot start the serving process: %v", err)
	}
	// Closed through its *os.File: closing the bare descriptor would leave the
	// File's finalizer to close fd 3 again at some later GC, by then the next file
	// opened (the kernel log), which then goes silent.
	cfgFile := os.NewFile(configFD, "config")
	cfg, err := decodeConfig(cfgFile)
	cfgFile.Close()
	if err != nil {
		if first != nil {
			first.cfgW.Close() // nothing to serve: it exits quietly
			first.proc.Wait()
		}
		if err == errNoConfig {
			return 0
		}
		rep.send(EventFatal, err.Error())
		fmt.Fprintf(os.Stderr, "isboot: %v\n", err)
		return exitGaveUp
	}
	if cfg.Version == "" {
		cfg.Version = version
	}
	log.SetVerbosity(cfg.Debug)
	if cfg.EmptyInitramfs {
		// Before enterRoot: the root to empty is the one we started in.
		if err := emptyAfterExec(execSeen, log.Debugf); err != nil {
			log.Warnf("supervisor: %v", err)
		}
	}
	s.exe = "/proc/self/exe"
	if cfg.Root != "" {
		if err := enterRoot(cfg.Root, cfg.StatusDir); err != nil {
			log.Warnf("daemon root %s: %v; a serving process restarted after switch_root may not start", cfg.Root, err)
			cfg.Root = ""
		} else {
			s.exe = rootExe
		}
	}
	s.cfg = *cfg
	s.cfg.Root = "" // the processes started from now on inherit the root
	if first != nil {
		// Started outside the root: it joins it (serveMain) before it opens anything.
		c := s.cfg
		c.Root = cfg.Root
		s.send(first, &c)
	}
	return s.run(sigs, first)
}

type supervisor struct {
	cfg   Config     // for the serving processes
	exe   string     // path that execs our own executable, named isboot
	files []*os.File // stdin, stdout, stderr for the serving process: what PID 1 gave us
	logf  func(string, ...any)
	rep   *reporter // PID 1's pipe, until the first ready or fatal

	restarts uint64
	served   bool // a serving process reported ready
	boost    bootBoost
}

// child is one serving process.
type child struct {
	proc    *os.Process
	cfgW    *os.File // its fd 3 until send
	started time.Time
	events  chan Event     // its reports; closed when it closes its end or exits
	exited  chan exitState // once, when it is gone
	up      bool           // it has its signal handlers
}

type exitState struct {
	code     int // -1 when killed by a signal
	signaled bool
	text     string // "exit status 2", "signal: killed"
}

// run supervises first (nil: none started yet), then its successors.
func (s *supervisor) run(sigs <-chan os.Signal, first *child) int {
	var pending os.Signal // for a serving process not yet up
	wait := minRestartWait
	for {
		c, err := first, error(nil)
		if first == nil {
			c, err = s.start()
		}
		first = nil
		if err != nil {
			s.logf("supervisor: cannot start the serving process: %v; trying again in %v", err, wait)
			if s.sleep(wait, sigs, &pending) {
				return 0
			}
			wait = min(2*wait, maxRestartWait)
			continue
		}
		st := s.watch(c, sigs, &pending)
		lived := time.Since(c.started)
		if st.code == 0 && !st.signaled {
			s.logf("supervisor: the serving process (pid %d) stopped", c.proc.Pid)
			return 0
		}
		if st.code == exitGaveUp && !s.served {
			s.logf("supervisor: the serving process (pid %d) gave up (%s)", c.proc.Pid, st.text)
			return exitGaveUp
		}
		delay := restartDelay(lived, &wait)
		s.restarts++
		s.logf("supervisor: the serving process (pid %d) died after %v (%s); starting another (restart %d) in %v",
			c.proc.Pid, lived.Round(time.Millisecond), st.text, s.restarts, delay)
		s.rep.send(EventRetry, fmt.Sprintf("the serving process died (%s); starting another", st.text))
		if delay > 0 && s.sleep(delay, sigs, &pending) {
			return 0
		}
	}
}

// restartDelay is how long to wait before replacing a serving process that lived
// for lived; wait is the back-off, doubled by each quick death and reset by a
// steady run.
func restartDelay(lived time.Duration, wait *time.Duration) time.Duration {
	if lived >= steadyRun {
		*wait = minRestartWait
		return 0
	}
	d := *wait
	*wait = min(2*d, maxRestartWait)
	return d
}

// sleep waits d, keeping the last signal for the next serving process. It reports
// true when that signal asks to stop and there is no device to hand back: no
// serving process ever had it.
func (s *supervisor) sleep(d time.Duration, sigs <-chan os.Signal, pending *os.Signal) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return false
		case sig := <-sigs:
			if !s.served && sig != FinalSignal {
				s.logf("supervisor: %v before anything was served: stopping", sig)
				return true
			}
			*pending = sig
		}
	}
}

// start runs a serving process with its configuration on fd 3.
func (s *supervisor) start() (*child, error) {
	c, err := s.spawn()
	if err != nil {
		return nil, err
	}
	cfg := s.cfg
	s.send(c, &cfg)
	return c, nil
}

// spawn starts a serving process with a pipe on fd 3 for its configuration and one
// on fd 4 for its reports. It opens no file: pipes, and the executable at s.exe.
func (s *supervisor) spawn() (*child, error) {
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	evR, evW, err := os.Pipe()
	if err != nil {
		cfgR.Close()
		cfgW.Close()
		return nil, err
	}
	p, err := os.StartProcess(s.exe, []string{Argv0, ServeArg}, &os.ProcAttr{
		Env:   []string{}, // nil would pass ours on; nothing secret goes there either
		Files: append(s.files[:3:3], cfgR, evW),
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	cfgR.Close()
	evW.Close()
	if err != nil {
		cfgW.Close()
		evR.Close()
		return nil, fmt.Errorf("exec %s: %w", s.exe, err)
	}
	s.boost.raise(p.Pid)
	c := &child{proc: p, cfgW: cfgW, started: time.Now(), events: make(chan Event, 16), exited: make(chan exitState, 1)}
	go readEvents(evR, c.events)
	go func() {
		ps, err := p.Wait()
		c.exited <- exitOf(ps, err)
	}()
	s.logf("supervisor: serving process started, pid %d", p.Pid)
	return c, nil
}

// send hands c its configuration (secrets included) and closes the pipe.
func (s *supervisor) send(c *child, cfg *Config) {
	cfg.Supervisor, cfg.Restarts = os.Getpid(), s.restarts
	// The pipe holds 64 KiB, far more than a configuration: this does not block.
	if err := cfg.encode(c.cfgW); err != nil {
		s.logf("supervisor: send the configuration to pid %d: %v", c.proc.Pid, err)
	}
	c.cfgW.Close()
}

func exitOf(ps *os.ProcessState, err error) exitState {
	if err != nil {
		return exitState{code: -1, text: err.Error()}
	}
	st := exitState{code: ps.ExitCode(), text: ps.String()}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		st.signaled = true
	}
	return st
}

// watch forwards c's reports and our signals until c exits, and returns how.
func (s *supervisor) watch(c *child, sigs <-chan os.Signal, pending *os.Signal) exitState {
	events := c.events
	for {
		select {
		case e, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			s.report(c, e)
			if e.Kind == eventUp && *pending != nil {
				s.signal(c, *pending)
				*pending = nil
			}
		case sig := <-sigs:
			if c.up {
				s.signal(c, sig)
			} else {
				*pending = sig
			}
		case st := <-c.exited:
			if events != nil {
				for e := range events { // what it said before it went
					s.report(c, e)
				}
			}
			return st
		}
	}
}

func (s *supervisor) signal(c *child, sig os.Signal) {
	if err := c.proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		s.logf("supervisor: forward %v to pid %d: %v", sig, c.proc.Pid, err)
	}
}

// report passes a serving process's report to PID 1 while PID 1 listens (until the
// first ready or fatal); later ones only go to the log.
func (s *supervisor) report(c *child, e Event) {
	switch e.Kind {
	case eventUp:
		c.up = true
		return
	case EventReady:
		if s.served {
			s.logf("supervisor: pid %d serves /dev/%s again (restart %d)", c.proc.Pid, e.Text, s.restarts)
		}
		s.served = true
	}
	s.rep.send(e.Kind, e.Text)
	if e.Kind != EventRetry {
		s.rep.close()
	}
}
