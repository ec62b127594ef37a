package daemon

import (
	"errors"
	"os"
	"slices"
	"testing"
	"time"
)

// The level changes only when the queue crosses a bound, and each change is one call:
// shallow raises, deep lowers, and depths in between keep what was set.
func TestQueuePriorityFollowsTheQueue(t *testing.T) {
	var calls []int
	q := &queuePriority{set: func(n int) error { calls = append(calls, n); return nil }}
	for _, d := range []int{1, 1, 2, 5, 7, 8, 32, 30, 5, 3, 2, 1, 9} {
		q.depth(d)
	}
	if want := []int{promptNice, 0, promptNice, 0}; !slices.Equal(calls, want) {
		t.Errorf("nice values set %v, want %v", calls, want)
	}
	// A depth between the bounds first: nothing to follow yet.
	calls = nil
	q = &queuePriority{set: func(n int) error { calls = append(calls, n); return nil }}
	q.depth(5)
	if len(calls) != 0 {
		t.Errorf("depth 5 first set %v, want nothing", calls)
	}
}

// fakeLoad drives a queuePriority with a clock and a process CPU time that it
// advances itself: each request takes step of wall time, share of it on the
// daemon's CPU.
type fakeLoad struct {
	t     time.Time
	cpu   time.Duration
	calls []int
	q     *queuePriority
}

func newFakeLoad() *fakeLoad {
	f := &fakeLoad{t: time.Unix(1e9, 0)}
	f.q = &queuePriority{
		set: func(n int) error { f.calls = append(f.calls, n); return nil },
		now: func() time.Time { return f.t },
		cpu: func() time.Duration { return f.cpu },
	}
	return f
}

// run sends requests at depth d for wall time d, each step long at share CPU.
func (f *fakeLoad) run(depth int, wall, step time.Duration, share float64) {
	for end := f.t.Add(wall); f.t.Before(end); {
		f.t = f.t.Add(step)
		f.cpu += time.Duration(share * float64(step))
		f.q.depth(depth)
	}
}

// A raised daemon that keeps the CPU busy while the queue stays shallow lowers
// itself for a probe, and a queue that then builds up (the submitters it had been
// preempting got to run) keeps it lowered until it drains.
func TestQueuePriorityProbeFindsTheQueue(t *testing.T) {
	f := newFakeLoad()
	f.run(1, minWindow+10*time.Millisecond, time.Millisecond, 0.6)
	if want := []int{promptNice, 0}; !slices.Equal(f.calls, want) {
		t.Fatalf("busy and shallow for a window: set %v, want %v", f.calls, want)
	}
	f.run(1, probeFor/2, time.Millisecond, 0.6) // inside the probe: stays lowered
	f.run(32, probeFor, 100*time.Microsecond, 0.6)
	f.run(20, time.Second, 100*time.Microsecond, 0.9) // deep and busy: no change
	if want := []int{promptNice, 0}; !slices.Equal(f.calls, want) {
		t.Errorf("the queue came during the probe: set %v, want %v", f.calls, want)
	}
	f.run(1, time.Millisecond, time.Millisecond, 0.1) // drained: raised again
	if want := []int{promptNice, 0, promptNice}; !slices.Equal(f.calls, want) {
		t.Errorf("after the queue drained: set %v, want %v", f.calls, want)
	}
}

// With no queue behind it (one reader waiting on each read), a probe ends raised
// again, and the probes that find nothing come ever further apart.
func TestQueuePriorityProbesBackOff(t *testing.T) {
	f := newFakeLoad()
	f.run(1, 10*time.Second, time.Millisecond, 0.6)
	// Windows of 0.2, 0.4, 0.8, 1.6, 3.2 and 3.2 s, each followed by a probe.
	var probes int
	for i, n := range f.calls {
		if n == 0 {
			probes++
			if i+1 < len(f.calls) && f.calls[i+1] != promptNice {
				t.Errorf("set %v: a probe not followed by the raise", f.calls)
			}
		}
	}
	if probes != 6 {
		t.Errorf("%d probes in 10 s of busy, lone reads (set %v), want 6", probes, f.calls)
	}
	// A spell of light load starts the windows short again.
	f.run(1, maxWindow+time.Second, 2*time.Millisecond, hogShare/4)
	f.calls = nil
	f.run(1, minWindow+minWindow/2, time.Millisecond, 0.6)
	if want := []int{0, promptNice}; !slices.Equal(f.calls, want) {
		t.Errorf("busy again after a quiet spell: set %v, want %v", f.calls, want)
	}
}

// A daemon that uses little of the CPU stays raised however long requests come:
// a boot's page faults keep their prompt answers.
func TestQueuePriorityStaysRaisedWhenIdle(t *testing.T) {
	f := newFakeLoad()
	f.run(1, 5*time.Second, 2*time.Millisecond, hogShare/2)
	if want := []int{promptNice}; !slices.Equal(f.calls, want) {
		t.Errorf("set %v, want %v", f.calls, want)
	}
}

// A refused change is logged once and not retried at every request.
func TestQueuePriorityRefusedOnce(t *testing.T) {
	var calls int
	var logged []string
	q := &queuePriority{
		set:  func(int) error { calls++; return errors.New("operation not permitted") },
		logf: func(f string, a ...any) { logged = append(logged, f) },
	}
	for range 5 {
		q.depth(1)
	}
	if calls != 1 || len(logged) != 1 {
		t.Errorf("%d calls, %d log lines, want 1 and 1", calls, len(logged))
	}
}

// setProcessNice reaches every thread of the process, whether or not it leads its
// process group (a test binary under go test does not).
func TestSetProcessNiceReachesEveryThread(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a negative nice value)")
	}
	defer setProcessNice(0)
	for _, n := range []int{promptNice, 0} {
		if err := setProcessNice(n); err != nil {
			t.Fatal(err)
		}
		if got := threadNices(t, os.Getpid()); !allAre(got, n) {
			t.Errorf("after setProcessNice(%d): threads at %v", n, got)
		}
	}
}
