package daemon

import (
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The serving process's priority follows the kernel's queue on the root device.
//
// The kernel's own initiator finishes a request in the network's receive softirq,
// ahead of every process. The daemon is a process, and at the default priority a
// request waits for it behind whatever else runs: through a systemd boot in a
// one-vCPU guest its threads waited 0.9-4.0 s in all for the CPU (schedstat), and a
// read took 3.9 ms on average against the kernel initiator's 2.0. So while few
// requests are in flight, which is when someone waits on each one (a page fault, a
// metadata read), the daemon runs raised, at promptNice, and gets the CPU as soon as
// a request or a response arrives. With a deep queue it goes back to the default:
// raised, it would preempt the process submitting the requests at each one, the
// kernel would never hand it a batch, and random 4 KiB reads at queue depth 32
// fell from about 4,300 to 700-1,500 IOPS in the same guest (bootnice_linux.go).
//
// Raised, the daemon can also hide the queue it would lower itself for: when it
// preempts every submitter at each request, the queue never gets deeper than one or
// two, and it stays raised. In the TCG guest random 4 KiB reads at queue depth 32
// ran at 880-1,940 IOPS in 5 of 13 runs of BenchmarkDiskInVM (against about 3,500
// in the others), each read answered alone: 3.6 context switches of the daemon per
// read against 0.4. From inside, that looks like one reader waiting on each read:
// one in flight, the daemon busy, and others waiting for the CPU (PSI's CPU
// pressure and the runnable count were as high with one reader as with 32). So
// the daemon tries: raised and busy (at least hogShare of a CPU over a window),
// it goes to the default for probeFor. A queue that was held back then builds up,
// and the depth rule keeps it lowered. Without one it is raised again, and tries
// again after a window twice as long, up to maxWindow: a lone reader loses the
// raise for 1 % of the time.
const (
	promptNice = -10
	// promptDepth and batchDepth are the requests in flight at or below which the
	// daemon runs raised, and at or above which it runs at the default. The gap
	// keeps a queue that wavers from switching at every request.
	promptDepth = 2
	batchDepth  = 8

	hogShare  = 0.4
	probeFor  = 30 * time.Millisecond
	minWindow = 200 * time.Millisecond
	maxWindow = 3200 * time.Millisecond
	// checkEvery is how many requests go by between looks at the clock.
	checkEvery = 8
)

// queuePriority sets the process's nice value from the queue depth it hears
// (nbd.Options.Depth). Only a change of level costs a system call or the lock;
// every request calls depth.
type queuePriority struct {
	// level holds the nice value set last plus levelKnown; 0 until the first.
	level atomic.Int32
	// requests counts calls, for looking at the clock every checkEvery of them.
	requests atomic.Uint32
	// probeOn is set while a probe runs, for the lock-free path.
	probeOn atomic.Bool
	mu      sync.Mutex // one change at a time; guards what follows
	// windowStart and cpuStart begin the window over which the process's CPU share
	// is measured while raised; zero when none runs. window is its length.
	windowStart time.Time
	cpuStart    time.Duration
	window      time.Duration
	probeEnd    time.Time // while probeOn

	// set sets the process's nice value; nil: setProcessNice.
	set func(nice int) error
	// now and cpu are the clock and the process's CPU time; nil: the real ones.
	now  func() time.Time
	cpu  func() time.Duration
	logf func(string, ...any)
	warn sync.Once
}

// depth takes the number of requests in flight, the one just arrived included.
func (q *queuePriority) depth(n int) {
	want := 1 // no change
	switch {
	case n <= promptDepth:
		want = promptNice
	case n >= batchDepth:
		want = 0
	}
	raised := q.level.Load() == promptNice+levelKnown
	if raised && q.requests.Add(1)%checkEvery == 0 || q.probeOn.Load() {
		q.mu.Lock()
		want = q.watch(n, want)
		q.mu.Unlock()
	}
	if want == 1 || q.level.Load() == int32(want+levelKnown) {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.level.Load() == int32(want+levelKnown) {
		return
	}
	q.setLocked(want)
}

// watch measures the raised process's CPU share and runs the probe; it returns the
// level depth should go to (1: none). Caller holds mu.
func (q *queuePriority) watch(n, want int) int {
	now := q.clock()
	if q.window == 0 {
		q.window = minWindow
	}
	if q.probeOn.Load() {
		switch {
		case n >= batchDepth: // the queue came: the depth rule has it from here
			q.probeOn.Store(false)
			q.window = minWindow
			return 0
		case now.Before(q.probeEnd):
			return 1 // lowered until the probe ends
		}
		// No queue: whoever waits on each read gets the raised priority back.
		q.probeOn.Store(false)
		q.window = min(2*q.window, maxWindow)
		q.windowStart, q.cpuStart = now, q.cpuTime()
		if n <= promptDepth {
			return promptNice
		}
		return 1 // one building up: the depth rule decides from here
	}
	if q.level.Load() != promptNice+levelKnown {
		q.windowStart = time.Time{}
		return want
	}
	if q.windowStart.IsZero() {
		q.windowStart, q.cpuStart = now, q.cpuTime()
		return want
	}
	wall := now.Sub(q.windowStart)
	if wall < q.window {
		return want
	}
	cpu := q.cpuTime()
	used := cpu - q.cpuStart
	q.windowStart, q.cpuStart = now, cpu
	if float64(used) < hogShare*float64(wall) {
		q.window = minWindow // not busy: the next busy spell is looked at soon
		return want
	}
	q.probeEnd = now.Add(probeFor)
	q.probeOn.Store(true)
	q.setLocked(0)
	return 1
}

func (q *queuePriority) clock() time.Time {
	if q.now != nil {
		return q.now()
	}
	return time.Now()
}

// cpuTime is the CPU the process has used, all threads.
func (q *queuePriority) cpuTime() time.Duration {
	if q.cpu != nil {
		return q.cpu()
	}
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// setLocked sets the nice value and records it. Caller holds mu.
func (q *queuePriority) setLocked(want int) {
	set := q.set
	if set == nil {
		set = setProcessNice
	}
	if err := set(want); err != nil {
		q.warn.Do(func() {
			if q.logf != nil {
				q.logf("serving at the default priority: nice %d: %v", want, err)
			}
		})
	}
	// Recorded even when it failed: a failure that comes again is not retried on
	// every request.
	q.level.Store(int32(want + levelKnown))
}

// levelKnown marks queuePriority.level as set: nice values lie in -20..19.
const levelKnown = 100

// setProcessNice gives every thread of the process the nice value n. Linux keeps
// it per thread, and a new thread inherits its creator's. The serving process leads
// its own process group (the supervisor starts it in a session of its own), whose
// members are its threads: one call covers them. A process that shares its group
// sets its threads one by one.
func setProcessNice(n int) error {
	if unix.Getpgrp() == os.Getpid() {
		return unix.Setpriority(unix.PRIO_PGRP, 0, n)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	var first error
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		// ESRCH: the thread ended since the listing.
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, n); err != nil && err != unix.ESRCH && first == nil {
			first = err
		}
	}
	return first
}
