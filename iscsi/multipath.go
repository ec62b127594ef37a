package iscsi

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/isboot/isboot/iscsi/pipebuf"
)

// Multipath is one logical unit reached over several sessions at once (active-active),
// what Linux builds from iscsid and dm-multipath: each path is a Session of its own
// (its portal, CHAP, ISID), and every I/O goes to the healthy path with the fewest
// commands outstanding, ties in turn. A path joins only when its LUN reports the same
// device identifier and serial number (VPD 0x83 and 0x80) as the first path that
// logged in. When a path's connection is lost, the commands it held that had not
// completed are reissued on the others (a block write is idempotent, so a write the
// target may have done already is simply done again), the path is marked failed and
// logs in again in the background until it rejoins. With no path left, I/O waits for
// one, as a single session waits for its reconnect.
//
// It offers what a LUN offers (the block-device contract, the asynchronous calls,
// Extents, Inquiry, Refresh), so the NBD exporter serves it unchanged.
type Multipath struct {
	paths   []*path
	logf    func(string, ...any)
	closing chan struct{}
	ctx     context.Context // ends at Close: a login in progress stops
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu      sync.Mutex
	ref     *LUN // the first LUN that joined: the identity and geometry every path must match
	refID   identity
	up      chan struct{} // closed and replaced whenever a path joins
	pending []*mpOp       // asynchronous I/O waiting for a path
	rr      int
	closed  bool
	lastErr map[int]error // each path's last login error, until it first joins
	refused chan struct{} // closed once every path failed its first login for good
	size    atomic.Int64  // bytes, from the reference LUN (Refresh updates it)
	joined  chan struct{} // closed when the first path joins
	perm    map[int]bool  // paths whose first login failed permanently
	once    sync.Once
}

// PathState is a path's condition, as the status file shows it.
type PathState string

const (
	PathConnecting PathState = "connecting" // not logged in yet
	PathActive     PathState = "active"     // carrying I/O
	PathFailed     PathState = "failed"     // lost: logging in again in the background
	PathRefused    PathState = "refused"    // leads to another logical unit: not used, tried again
)

// PathStats describes one path for the status file.
type PathStats struct {
	Portal    string
	State     PathState
	Reads     uint64 // read commands completed on this path
	Writes    uint64 // write commands completed on this path
	Errors    uint64 // commands that failed on this path (reissued elsewhere or reported)
	Failovers uint64 // times the path was lost and its commands moved to the others
	LastError string // why it last failed or was refused; kept once it is back
}

type path struct {
	ix  int
	cfg Config

	// guarded by Multipath.mu
	sess      *Session
	state     PathState
	lastError string

	tried     chan struct{} // closed after the first login attempt
	triedOnce sync.Once

	inflight                         atomic.Int64
	reads, writes, errors, failovers atomic.Uint64
}

// mpOp is an asynchronous read or write waiting for, or running on, a path.
type mpOp struct {
	p     []byte
	off   int64
	write bool
	fua   bool
	done  func(int, error)
	// A read into pipe (n bytes) rather than p: ReadAtPipe.
	pipe *pipebuf.Pipe
	n    int
}

// Path timing: a path that stops answering is given up within NopInterval+NopTimeout
// (about 5 s) rather than the single-session defaults (15 s), since its commands have
// somewhere else to go.
const (
	pathNopInterval = 2 * time.Second
	pathNopTimeout  = 3 * time.Second
	pathMinBackoff  = 500 * time.Millisecond
	pathMaxBackoff  = 5 * time.Second
)

// DialMultipath logs in on every path at once and returns as soon as one serves the
// LUN; the others join when they log in and prove to lead to the same logical unit.
// It fails when ctx ends first, or when every path's first login failed for good
// (IsPermanent). Each Config is one path (usually one portal); logging goes to the
// first's Logf. Paths to the same target from the same initiator need distinct
// ISIDs: a zero ISID gets a random one, kept for the path's life.
func DialMultipath(ctx context.Context, cfgs []Config) (*Multipath, error) {
	if len(cfgs) == 0 {
		return nil, errors.New("iscsi: multipath: no path")
	}
	m := &Multipath{
		closing: make(chan struct{}),
		up:      make(chan struct{}),
		joined:  make(chan struct{}),
		refused: make(chan struct{}),
		lastErr: map[int]error{},
		perm:    map[int]bool{},
		logf:    cfgs[0].Logf,
	}
	if m.logf == nil {
		m.logf = func(string, ...any) {}
	}
	seen := map[string]int{}
	for i, c := range cfgs {
		if _, err := c.withDefaults(); err != nil {
			return nil, fmt.Errorf("iscsi: multipath: path %d: %w", i, err)
		}
		if c.ISID == ([6]byte{}) {
			c.ISID[0] = 0x80
			rand.Read(c.ISID[1:4])
			c.ISID[5] = byte(i)
		}
		key := c.InitiatorName + "\x00" + c.TargetName + "\x00" + string(c.ISID[:])
		if j, dup := seen[key]; dup {
			return nil, fmt.Errorf("iscsi: multipath: paths %d and %d share initiator, target and ISID: the second login would end the first session", j, i)
		}
		seen[key] = i
		c.NoReconnect = true
		c.Retry = RetryPolicy{MaxAttempts: max(len(c.Portals), 1), InitialBackoff: c.Retry.InitialBackoff, MaxBackoff: c.Retry.MaxBackoff}
		if c.NopInterval <= 0 {
			c.NopInterval = pathNopInterval
		}
		if c.NopTimeout <= 0 {
			c.NopTimeout = pathNopTimeout
		}
		m.paths = append(m.paths, &path{ix: i, cfg: c, state: PathConnecting, tried: make(chan struct{})})
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	for _, pa := range m.paths {
		m.wg.Add(1)
		go m.revive(pa)
	}
	select {
	case <-m.joined:
		return m, nil
	case <-m.refused:
		err := m.firstError()
		m.Close()
		return nil, err
	case <-ctx.Done():
		err := fmt.Errorf("iscsi: multipath: no path logged in: %w (%v)", ctx.Err(), m.firstError())
		m.Close()
		return nil, err
	}
}

// firstError is the login error of the lowest path that has one.
func (m *Multipath) firstError() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range m.paths {
		if err := m.lastErr[i]; err != nil {
			return err
		}
	}
	return errors.New("iscsi: multipath: no path logged in")
}

// revive logs path pa in until it joins (or the Multipath closes), backing off
// between attempts.
func (m *Multipath) revive(pa *path) {
	defer m.wg.Done()
	backoff := pathMinBackoff
	lastMsg := ""
	cfg := pa.cfg
	for {
		s, err := Dial(m.ctx, cfg)
		if err == nil {
			// The reference is the lowest path whose first login works: the
			// boot target's before the others, whichever answers first.
			for _, lower := range m.paths[:pa.ix] {
				select {
				case <-lower.tried:
				case <-m.closing:
				}
			}
			err = m.join(pa, s)
		}
		pa.triedOnce.Do(func() { close(pa.tried) })
		if err == nil {
			return
		}
		if s != nil {
			s.Close()
		}
		if m.isClosed() {
			return
		}
		m.loginFailed(pa, err)
		if msg := err.Error(); msg != lastMsg {
			m.logf("iscsi: path %d (%s): %v; trying again in the background", pa.ix, pa.portal(), err)
			lastMsg = msg
		}
		// The session's own lines would repeat every attempt: this loop says
		// what changes, and join says when the path is back.
		cfg.Logf = func(string, ...any) {}
		select {
		case <-m.closing:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, pathMaxBackoff)
	}
}

func (pa *path) portal() string {
	if len(pa.cfg.Portals) == 1 {
		return pa.cfg.Portals[0]
	}
	return fmt.Sprint(pa.cfg.Portals)
}

// loginFailed records a failed login; once every path that never joined has failed
// for good, and none joined, DialMultipath gives up.
func (m *Multipath) loginFailed(pa *path, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	pa.lastError = err.Error()
	if m.ref != nil {
		return
	}
	m.lastErr[pa.ix] = err
	if IsPermanent(err) {
		m.perm[pa.ix] = true
	}
	if len(m.perm) == len(m.paths) {
		m.once.Do(func() { close(m.refused) })
	}
}

// join puts session s to work as path pa, once its LUN proves to be the reference's.
func (m *Multipath) join(pa *path, s *Session) error {
	s.mu.Lock()
	id := s.ident
	s.mu.Unlock()
	l := s.LUN()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	if m.ref == nil {
		if id.devID == "" {
			m.logf("iscsi: path %d (%s): the LUN has no device identifier (VPD 0x83): other paths are checked against its serial number only", pa.ix, pa.portal())
		}
		m.ref, m.refID = l, id
		m.size.Store(l.Size())
		close(m.joined)
	} else if err := m.sameUnit(l, id); err != nil {
		pa.state, pa.lastError = PathRefused, err.Error()
		m.mu.Unlock()
		return err
	}
	pa.sess, pa.state = s, PathActive
	close(m.up)
	m.up = make(chan struct{})
	waiting := m.pending
	m.pending = nil
	m.wg.Add(1)
	m.mu.Unlock()
	m.logf("iscsi: path %d (%s) active: %s LUN %s", pa.ix, pa.portal(), pa.cfg.TargetName, pa.cfg.LUNString())
	go m.watch(pa, s)
	for _, o := range waiting {
		m.dispatch(o)
	}
	return nil
}

// sameUnit refuses a path whose LUN is not the reference's logical unit: another
// device identifier or serial number, or another geometry.
func (m *Multipath) sameUnit(l *LUN, id identity) error {
	switch {
	case m.refID.devID == "" && m.refID.serial == "":
		return errors.New("refused: the first path's LUN has neither device identifier nor serial number, so no other path can be proved to reach it")
	case id != m.refID:
		return fmt.Errorf("refused: it leads to another logical unit (%s, serial %q), not %s, serial %q",
			designatorID([]byte(id.devID)), printable([]byte(id.serial)), m.ref.inquiry.ID, m.ref.inquiry.Serial)
	case l.BlockSize() != m.ref.BlockSize() || l.ReadOnly() != m.ref.ReadOnly():
		return fmt.Errorf("refused: %d-byte blocks (read-only %v), the first path has %d (read-only %v)",
			l.BlockSize(), l.ReadOnly(), m.ref.BlockSize(), m.ref.ReadOnly())
	}
	return nil
}

// watch notices a path lost while idle (its pings went unanswered).
func (m *Multipath) watch(pa *path, s *Session) {
	defer m.wg.Done()
	select {
	case <-s.Failed():
		m.pathFailed(pa, s, s.Err())
	case <-m.closing:
	}
}

// pathFailed takes session s out of path pa (once), and starts logging it in again.
func (m *Multipath) pathFailed(pa *path, s *Session, err error) {
	m.mu.Lock()
	if pa.sess != s || m.closed {
		m.mu.Unlock()
		return
	}
	pa.sess, pa.state = nil, PathFailed
	if err != nil {
		pa.lastError = err.Error()
	}
	pa.failovers.Add(1)
	m.wg.Add(1)
	m.mu.Unlock()
	m.logf("iscsi: path %d (%s) failed: %v; its unfinished commands go to the other paths, and it logs in again in the background", pa.ix, pa.portal(), err)
	go s.Close() // fails what it still holds with ErrClosed: reissued elsewhere
	go m.revive(pa)
}

func (m *Multipath) isClosed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// pickLocked is the active path with the fewest commands outstanding, ties taken in
// turn; nil when none is active.
func (m *Multipath) pickLocked() (*path, *Session) {
	var best *path
	n := len(m.paths)
	m.rr++
	for k := range n {
		pa := m.paths[(m.rr+k)%n]
		if pa.sess != nil && (best == nil || pa.inflight.Load() < best.inflight.Load()) {
			best = pa
		}
	}
	if best == nil {
		return nil, nil
	}
	return best, best.sess
}

// waitPath waits for an active path.
func (m *Multipath) waitPath() (*path, *Session, error) {
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, nil, ErrClosed
		}
		pa, s := m.pickLocked()
		up := m.up
		m.mu.Unlock()
		if pa != nil {
			return pa, s, nil
		}
		select {
		case <-up:
		case <-m.closing:
		}
	}
}

// lost reports whether err on session s means the path died under the command
// (rather than the LUN refusing it), so that the command belongs on another path.
func (m *Multipath) lost(s *Session, err error) bool {
	return err != nil && s.Err() != nil && !m.isClosed()
}

// do runs f on a path, and again on another for as long as paths die under it.
func (m *Multipath) do(kind int, f func(l *LUN) error) error {
	for {
		pa, s, err := m.waitPath()
		if err != nil {
			return err
		}
		pa.inflight.Add(1)
		err = f(s.lun)
		pa.inflight.Add(-1)
		if m.lost(s, err) {
			pa.errors.Add(1)
			m.pathFailed(pa, s, err)
			continue
		}
		pa.count(kind, err)
		return err
	}
}

const (
	opOther = iota
	opRead
	opWrite
)

func (pa *path) count(kind int, err error) {
	switch {
	case err != nil:
		pa.errors.Add(1)
	case kind == opRead:
		pa.reads.Add(1)
	case kind == opWrite:
		pa.writes.Add(1)
	}
}

// dispatch starts o on a path, or queues it until one joins.
func (m *Multipath) dispatch(o *mpOp) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		o.done(0, ErrClosed)
		return
	}
	pa, s := m.pickLocked()
	if pa == nil {
		m.pending = append(m.pending, o)
		m.mu.Unlock()
		return
	}
	m.mu.Unlock()
	pa.inflight.Add(1)
	done := func(n int, err error) {
		pa.inflight.Add(-1)
		if m.lost(s, err) {
			pa.errors.Add(1)
			m.pathFailed(pa, s, err)
			// Not on the dead session's goroutine: the next path may make us wait.
			go m.dispatch(o)
			return
		}
		kind := opRead
		if o.write {
			kind = opWrite
		}
		pa.count(kind, err)
		o.done(n, err)
	}
	switch {
	case o.write:
		s.lun.WriteAtAsync(o.p, o.off, o.fua, done)
	case o.pipe != nil:
		if !s.lun.ReadAtPipe(o.pipe, o.n, o.off, done) {
			// This path takes less per command than the first did: read through
			// memory instead.
			go func() { done(readIntoPipe(s.lun, o.pipe, o.n, o.off)) }()
		}
	default:
		s.lun.ReadAtAsync(o.p, o.off, done)
	}
}

// readIntoPipe reads n bytes at off with ReadAt and writes them into pipe, after
// emptying it of what a lost path may have left.
func readIntoPipe(l *LUN, pipe *pipebuf.Pipe, n int, off int64) (int, error) {
	buf := make([]byte, n)
	if _, err := l.ReadAt(buf, off); err != nil {
		return 0, err
	}
	pipe.Reset()
	if err := pipe.Write(buf); err != nil {
		return 0, err
	}
	return n, nil
}

// ReadAtAsync is LUN.ReadAtAsync on the least busy path.
func (m *Multipath) ReadAtAsync(p []byte, off int64, done func(n int, err error)) {
	m.dispatch(&mpOp{p: p, off: off, done: done})
}

// ReadAtPipe is LUN.ReadAtPipe on the least busy path, so the NBD server splices
// multipath reads to its client as it does a single session's. A read whose path
// dies under it goes to another path, whose first Data-In empties the pipe of what
// the lost one left (the dead session's reader has stopped before its commands fail).
func (m *Multipath) ReadAtPipe(pipe *pipebuf.Pipe, n int, off int64, done func(n int, err error)) bool {
	if n > m.ref.maxXfer {
		return false
	}
	m.dispatch(&mpOp{pipe: pipe, n: n, off: off, done: done})
	return true
}

// WriteAtAsync is LUN.WriteAtAsync on the least busy path.
func (m *Multipath) WriteAtAsync(p []byte, off int64, fua bool, done func(n int, err error)) {
	m.dispatch(&mpOp{p: p, off: off, write: true, fua: fua, done: done})
}

func (m *Multipath) ReadAt(p []byte, off int64) (n int, err error) {
	err = m.do(opRead, func(l *LUN) error { n, err = l.ReadAt(p, off); return err })
	return n, err
}

func (m *Multipath) WriteAt(p []byte, off int64) (n int, err error) {
	err = m.do(opWrite, func(l *LUN) error { n, err = l.WriteAt(p, off); return err })
	return n, err
}

func (m *Multipath) WriteAtFUA(p []byte, off int64) (n int, err error) {
	err = m.do(opWrite, func(l *LUN) error { n, err = l.WriteAtFUA(p, off); return err })
	return n, err
}

// Flush is SYNCHRONIZE CACHE on one path: the cache belongs to the logical unit, so
// it covers the writes every path completed.
func (m *Multipath) Flush() error { return m.do(opOther, (*LUN).Flush) }

func (m *Multipath) Unmap(off, length int64) error {
	return m.do(opOther, func(l *LUN) error { return l.Unmap(off, length) })
}

func (m *Multipath) WriteZeroes(off, length int64) error {
	return m.do(opWrite, func(l *LUN) error { return l.WriteZeroes(off, length) })
}

// Extents is LUN.Extents on one path.
func (m *Multipath) Extents(dst []Extent, off, length int64) (out []Extent, err error) {
	err = m.do(opOther, func(l *LUN) error { out, err = l.Extents(dst, off, length); return err })
	return out, err
}

func (m *Multipath) Size() int64    { return m.size.Load() }
func (m *Multipath) BlockSize() int { return m.ref.BlockSize() }
func (m *Multipath) ReadOnly() bool { return m.ref.ReadOnly() }

// ZeroesCheaply is the first path's: every path is the same LUN.
func (m *Multipath) ZeroesCheaply() bool { return m.ref.ZeroesCheaply() }

// Inquiry describes the logical unit as the first path read it.
func (m *Multipath) Inquiry() Inquiry { return m.ref.Inquiry() }

// Refresh reads the capacity again on every active path (each checks I/O against
// its own), and returns the size.
func (m *Multipath) Refresh() (int64, error) {
	ss := m.active()
	var errs []error
	for _, s := range ss {
		size, err := s.lun.Refresh()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m.size.Store(size)
	}
	if len(errs) == len(ss) && len(ss) > 0 {
		return m.Size(), errors.Join(errs...)
	}
	return m.Size(), nil
}

// CapacityChanged is never ready: a capacity change is read by Refresh when asked.
func (m *Multipath) CapacityChanged() <-chan struct{} { return nil }

// Primary is the session of the lowest active path (for the status file's session
// keys), or nil when no path is active.
func (m *Multipath) Primary() *Session {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, pa := range m.paths {
		if pa.sess != nil {
			return pa.sess
		}
	}
	return nil
}

// Paths describes every path, in the order given to DialMultipath.
func (m *Multipath) Paths() []PathStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]PathStats, len(m.paths))
	for i, pa := range m.paths {
		out[i] = PathStats{
			Portal: pa.portal(), State: pa.state, LastError: pa.lastError,
			Reads: pa.reads.Load(), Writes: pa.writes.Load(), Errors: pa.errors.Load(), Failovers: pa.failovers.Load(),
		}
	}
	return out
}

// Idle logs every active path out until its next command (Session.Idle).
func (m *Multipath) Idle(ctx context.Context) error {
	var errs []error
	for _, s := range m.active() {
		errs = append(errs, s.Idle(ctx))
	}
	return errors.Join(errs...)
}

// active is the session of every active path.
func (m *Multipath) active() []*Session {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ss []*Session
	for _, pa := range m.paths {
		if pa.sess != nil {
			ss = append(ss, pa.sess)
		}
	}
	return ss
}

// Close logs every path out; I/O still waiting gets ErrClosed.
func (m *Multipath) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	ss := m.active()
	m.mu.Lock()
	for _, pa := range m.paths {
		pa.sess = nil
	}
	waiting := m.pending
	m.pending = nil
	m.mu.Unlock()
	close(m.closing)
	m.cancel()
	var errs []error
	for _, s := range ss {
		errs = append(errs, s.Close())
	}
	for _, o := range waiting {
		o.done(0, ErrClosed)
	}
	m.wg.Wait()
	return errors.Join(errs...)
}
