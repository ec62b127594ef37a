package daemon

import (
	"sync"
	"time"
)

// limitLog passes messages (what names their source) through until burst of them arrive within window, then
// drops the rest of that window and says how many it dropped. The initiator logs each
// reconnect attempt; with the target down for an hour that would bury the console
// (and the rescue shell on it).
func limitLog(logf func(string, ...any), what string, burst int, window time.Duration, now func() time.Time) func(string, ...any) {
	var mu sync.Mutex
	var start time.Time
	var n, dropped int
	return func(format string, args ...any) {
		mu.Lock()
		t := now()
		if t.Sub(start) >= window {
			if dropped > 0 {
				logf("(%d %s messages suppressed in the last %v)", dropped, what, window)
			}
			start, n, dropped = t, 0, 0
		}
		n++
		if n > burst {
			dropped++
			mu.Unlock()
			return
		}
		mu.Unlock()
		logf(format, args...)
	}
}
