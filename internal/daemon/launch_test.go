package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The test binary plays the daemon when started as "@isboot" (by Start).
func TestMain(m *testing.M) {
	if os.Args[0] == Argv0 {
		if exe, _ := os.Executable(); strings.Contains(filepath.Base(exe), supervisedName) {
			os.Exit(mainWith(fakeDial, "test", fakeAttach))
		}
		os.Exit(testChild())
	}
	os.Exit(m.Run())
}

// Task flags set by PR_SET_IO_FLUSHER (include/linux/sched.h).
const pfIOFlusher = 0x00080000 | 0x00100000 // PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE

// thread is what the test child checks of each of its threads.
type thread struct {
	comm  string // process name
	flags uint64 // PF_*
}

// threads reads every thread of this process from /proc/self/task/*/stat.
func threads() (map[string]thread, error) {
	tasks, err := filepath.Glob("/proc/self/task/*/stat")
	if err != nil {
		return nil, err
	}
	out := map[string]thread{}
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread exited
		}
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		f := strings.Fields(s[end+1:])
		flags, err := strconv.ParseUint(f[6], 10, 64) // field 9, "flags"
		if err != nil {
			return nil, fmt.Errorf("%s: %v", p, err)
		}
		out[filepath.Base(filepath.Dir(p))] = thread{comm: s[open+1 : end], flags: flags}
	}
	return out, nil
}

func testChild() int {
	// Start execs the child prepared; a child that had to re-exec itself finds the
	// link it made for its own pid.
	_, err := os.Lstat(fmt.Sprintf("/run/.isboot-exec.%d/%s", os.Getpid(), Name))
	reexeced := err == nil
	flErr := prepareProcess() // re-execs if need be; returns with the flag set and the name
	rep := newReporter(reportFD)
	cfg, err := decodeConfig(os.NewFile(configFD, "config"))
	if err == errNoConfig {
		return 0
	}
	if err != nil {
		rep.send(EventFatal, err.Error())
		return 1
	}
	// Make the runtime start more threads, then look at all of them.
	// Wait until each holds its own thread: a fixed 50 ms could end before they
	// all ran on a loaded machine, and then too few threads were counted.
	var wg, locked sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		locked.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			locked.Done()
			<-stop
		}()
	}
	locked.Wait()
	all, err := threads()
	close(stop)
	wg.Wait()
	if err != nil {
		rep.send(EventFatal, err.Error())
		return 1
	}
	withFlag := 0
	var names []string
	for _, th := range all {
		if th.flags&pfIOFlusher == pfIOFlusher {
			withFlag++
		}
		if !slices.Contains(names, th.comm) {
			names = append(names, th.comm)
		}
	}
	links, _ := filepath.Glob(fmt.Sprintf("/run/.isboot-exec.%d", os.Getpid()))
	tmpLinks, _ := filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf(".isboot-exec.%d", os.Getpid())))
	cmdline, _ := os.ReadFile("/proc/self/cmdline")
	environ, _ := os.ReadFile("/proc/self/environ")
	leak := strings.Contains(string(cmdline)+string(environ), cfg.CHAPSecret)
	rep.send(EventRetry, fmt.Sprintf("flusher-error=%v reexec=%v", flErr, reexeced))
	rep.send(EventReady, fmt.Sprintf("threads=%d flusher=%d leak=%v target=%s secret-ok=%v argv0=%s comms=%s exec-links=%d",
		len(all), withFlag, leak, cfg.TargetName, cfg.CHAPSecret == secret, strings.Split(string(cmdline), "\x00")[0],
		strings.Join(names, ","), len(links)+len(tmpLinks)))
	return 0
}

func TestStartPassesConfigOverPipe(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	child, err := Start(exe, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the child waits for its configuration
	if err := child.Send(testConfig("")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Cmd.Process.Kill(); child.Cmd.Wait() })
	var got []Event
	timeout := time.After(30 * time.Second)
	for done := false; !done; {
		select {
		case e, ok := <-child.Events:
			if !ok {
				done = true
				break
			}
			got = append(got, e)
		case <-timeout:
			t.Fatalf("no end of events; got %v", got)
		}
	}
	if err := child.Cmd.Wait(); err != nil {
		t.Fatalf("child: %v (events %v)", err, got)
	}
	if len(got) != 2 || got[1].Kind != EventReady {
		t.Fatalf("events %v", got)
	}
	r := got[1].Text
	t.Logf("child reports %s", r)
	var threads int
	fmt.Sscanf(r[strings.Index(r, "threads="):], "threads=%d", &threads)
	if threads < 5 {
		t.Errorf("the child saw %d threads, want the 5 or more it runs (%s)", threads, r)
	}
	// Every thread is named isboot (ps, pgrep), while argv[0] keeps the '@' systemd
	// looks for; the link that gave the name is gone.
	for _, want := range []string{"leak=false", "target=iqn.2024-01.org.example:disk", "secret-ok=true", "argv0=@isboot",
		"comms=isboot ", "exec-links=0"} {
		if !strings.Contains(r, want) {
			t.Errorf("child report %q lacks %q", r, want)
		}
	}
	if !hasCapSysResource() {
		t.Logf("no CAP_SYS_RESOURCE here: PR_SET_IO_FLUSHER not checked (%s)", got[0].Text)
		return
	}
	// Every thread, including those the runtime started after the re-exec, has the flag.
	var flusher int
	fmt.Sscanf(r[strings.Index(r, "threads="):], "threads=%d flusher=%d", &threads, &flusher)
	if got[0].Text != "flusher-error=<nil> reexec=false" || threads < 5 || flusher != threads {
		t.Errorf("IO_FLUSHER on %d of %d threads (%s); want every thread, and no re-exec", flusher, threads, got[0].Text)
	}
}

// hasCapSysResource reports whether PR_SET_IO_FLUSHER is allowed (containers often drop it).
func hasCapSysResource() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<24) != 0 // CAP_SYS_RESOURCE
		}
	}
	return false
}

// A daemon whose boot was given up before it had a configuration exits quietly.
func TestCancelBeforeConfig(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	child, err := Start(exe, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	child.Cancel()
	var got []Event
	for e := range child.Events {
		got = append(got, e)
	}
	if err := child.Cmd.Wait(); err != nil || len(got) != 0 {
		t.Errorf("exit %v, events %v; want a quiet exit", err, got)
	}
}
