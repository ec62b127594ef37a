package daemon

import (
	"errors"
	"os"
	"slices"
	"testing"
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
