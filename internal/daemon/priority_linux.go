package daemon

import (
	"os"
	"strconv"
	"sync"
	"sync/atomic"

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
const (
	promptNice = -10
	// promptDepth and batchDepth are the requests in flight at or below which the
	// daemon runs raised, and at or above which it runs at the default. The gap
	// keeps a queue that wavers from switching at every request.
	promptDepth = 2
	batchDepth  = 8
)

// queuePriority sets the process's nice value from the queue depth it hears
// (nbd.Options.Depth). Only a change of level costs a system call or the lock;
// every request calls depth.
type queuePriority struct {
	// level holds the nice value set last plus levelKnown; 0 until the first.
	level atomic.Int32
	mu    sync.Mutex // one change at a time
	// set sets the process's nice value; nil: setProcessNice.
	set  func(nice int) error
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
	if want == 1 || q.level.Load() == int32(want+levelKnown) {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.level.Load() == int32(want+levelKnown) {
		return
	}
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
