package daemon

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/nbd"
	"github.com/isboot/isboot/internal/status"
)

// Publisher keeps a status file current. The boot daemon and `isboot serve` both
// publish through it, so the file means the same whoever writes it: rewritten on
// every change of state, counters or last error (checked by Observe), and at least
// every interval while serving.
type Publisher struct {
	w        *status.Writer // nil: no file, the status lives in memory only
	interval time.Duration
	logf     func(string, ...any)

	mu        sync.Mutex
	st        status.Status // guarded by mu
	lastWrite time.Time     // guarded by mu
}

// NewPublisher starts publishing st to the file at path ("" or an unusable path:
// in memory only, with a warning for the latter). interval <= 0 means 5 s.
func NewPublisher(path string, st status.Status, interval time.Duration, logf func(string, ...any)) *Publisher {
	if interval <= 0 {
		interval = 5 * time.Second
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	p := &Publisher{interval: interval, logf: logf, st: st}
	if path != "" {
		w, err := status.Create(path)
		if err != nil {
			logf("warning: %v; serving without a status file", err)
		} else {
			p.w = w
		}
	}
	p.flush()
	return p
}

// Sample is what the serving side measured, for Observe.
type Sample struct {
	// Session is the iSCSI session; nil when the device is no iSCSI LUN (a file or
	// memory under `isboot serve`).
	Session *SessionInfo
	NBD     nbd.Stats
	// Attached says the device is attached to a kernel NBD device, with Live of its
	// sockets alive and Reconfigures socket swaps so far.
	Attached     bool
	Live         int
	Reconfigures uint64
	LoginErrors  uint64 // failed logins before the session came up
	// ReadAhead counts the read-ahead's work; nil when the device has none.
	ReadAhead *blockdev.ReadAheadStats
}

// Observe takes a sample into the status (counters, session, serving or
// reconnecting) and rewrites the file when it changed, when the interval passed, or
// when forced.
func (p *Publisher) Observe(s Sample, force bool) {
	p.mu.Lock()
	before := p.st
	p.mu.Unlock()
	p.apply(func(st *status.Status) {
		var info SessionInfo
		if s.Session != nil {
			info = *s.Session
			st.Session = status.Session{ISID: info.ISID, TSIH: info.TSIH, Params: info.Params}
			st.Paths = info.Paths
		}
		if info.Portal != "" {
			st.Portal = info.Portal
		}
		st.Counters = status.Counters{
			Reconnects: info.Reconnects + s.Reconfigures,
			Commands:   s.NBD.Commands, ReadBytes: s.NBD.ReadBytes, WriteBytes: s.NBD.WriteBytes,
			ZeroWrites: s.NBD.ZeroWrites, MergedReads: s.NBD.MergedReads,
			Errors: s.LoginErrors + s.NBD.Errors + info.Errors,
		}
		if ra := s.ReadAhead; ra != nil {
			st.ReadAhead = true
			st.Counters.ReadAheadFetched, st.Counters.ReadAheadHits, st.Counters.ReadAheadWasted = ra.Fetched, ra.Hits, ra.Wasted
		}
		if info.Idle {
			st.State = status.LoggedOut
		} else if info.Recovering || (s.Attached && s.Live == 0) {
			st.State = status.Reconnecting
		} else {
			st.State = status.Serving
		}
		if info.LastError != "" {
			st.LastError = info.LastError
		}
	})
	p.mu.Lock()
	changed := p.st.State != before.State || p.st.Counters != before.Counters || p.st.LastError != before.LastError ||
		!slices.Equal(p.st.Paths, before.Paths)
	stale := time.Since(p.lastWrite) >= p.interval
	p.mu.Unlock()
	if force || changed || stale {
		p.flush()
	}
}

// Tick is how often a server should call Observe: often enough that a change shows
// within a second, whatever the interval.
func (p *Publisher) Tick() time.Duration { return min(time.Second, p.interval) }

// Follow observes sample every Tick until ctx ends, for a server with nothing else
// to wait for.
func (p *Publisher) Follow(ctx context.Context, sample func() Sample) {
	t := time.NewTicker(p.Tick())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.Observe(sample(), false)
		}
	}
}

// Update changes the status and rewrites the file.
func (p *Publisher) Update(f func(*status.Status)) {
	p.apply(f)
	p.flush()
}

// Status returns a copy of the status as last changed.
func (p *Publisher) Status() status.Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

// Stopped records a clean stop: state failed, last error "stopped" (the status file
// stays, so whoever looks later sees the server ended and why).
func (p *Publisher) Stopped() {
	p.Update(func(st *status.Status) { st.State, st.LastError = status.Failed, "stopped" })
}

// Failed records why serving ended.
func (p *Publisher) Failed(err error) {
	p.Update(func(st *status.Status) { st.State, st.LastError = status.Failed, err.Error() })
}

// Close releases the file's directory; the file stays.
func (p *Publisher) Close() error {
	if p.w == nil {
		return nil
	}
	return p.w.Close()
}

// apply changes the status in memory, logging a change of state.
func (p *Publisher) apply(f func(*status.Status)) {
	p.mu.Lock()
	old := p.st.State
	f(&p.st)
	now := p.st.State
	p.mu.Unlock()
	if now != old {
		p.logf("state: %s", now)
	}
}

func (p *Publisher) flush() {
	if p.w == nil {
		return
	}
	p.mu.Lock()
	st := p.st
	p.lastWrite = time.Now()
	p.mu.Unlock()
	if err := p.w.Write(&st); err != nil {
		p.logf("warning: %v", err)
	}
}
