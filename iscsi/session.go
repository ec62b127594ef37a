package iscsi

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned for I/O on a closed session.
var ErrClosed = errors.New("iscsi: session closed")

// Stats are the session counters for the status file.
type Stats struct {
	Reconnects uint64
	Commands   uint64
	ReadBytes  uint64
	WriteBytes uint64
	Errors     uint64
}

// taskRef names one submission of a task slot; a stale ref (the slot has moved on)
// is recognised by its seq and ignored.
type taskRef struct {
	t   *task
	seq uint64
}

// Session is a logged-in iSCSI session to one LUN. It is safe for concurrent use.
type Session struct {
	cfg      Config
	lunBytes [8]byte
	tasks    []task // QueueDepth user slots, then one internal slot
	free     chan int
	cmdCh    chan taskRef

	mu        sync.Mutex
	active    []bool
	seq       uint64
	ittGen    uint32
	conn      *conn
	gen       uint64
	state     string
	tsih      uint16
	prevTSIH  uint16
	portal    string
	portalIx  int
	ident     identity
	haveID    bool
	chapOffer string
	failed    error
	closed    bool

	internalMu sync.Mutex
	tmfMu      sync.Mutex
	closing    chan struct{}
	failedCh   chan struct{} // closed when the session gives up
	runDone    chan struct{}
	lun        *LUN

	progress    atomic.Bool   // a user command completed since the last connection loss
	targetPings atomic.Uint64 // NOP-In pings answered

	reconnects, commands, readBytes, writeBytes, errs atomic.Uint64
}

// Dial connects to the first portal that answers, logs in, checks the LUN and
// returns a session ready for I/O. Permanent login errors (authentication, unknown
// target) return at once; transient ones are retried under cfg.Retry until ctx ends.
func Dial(ctx context.Context, cfg Config) (*Session, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := newSession(c)
	if err := s.connect(ctx, true, &retryState{}); err != nil {
		return nil, err
	}
	go s.run()
	lun, err := s.openLUN()
	if err != nil {
		s.Close()
		return nil, err
	}
	s.lun = lun
	return s, nil
}

// newSession allocates every task slot up front: I/O later reuses them.
func newSession(c Config) *Session {
	s := &Session{
		cfg:       c,
		lunBytes:  encodeLUN(c.LUN),
		tasks:     make([]task, c.QueueDepth+1),
		free:      make(chan int, c.QueueDepth),
		cmdCh:     make(chan taskRef, 2*c.QueueDepth),
		active:    make([]bool, c.QueueDepth+1),
		state:     "logging-in",
		chapOffer: chapOffer,
		closing:   make(chan struct{}),
		failedCh:  make(chan struct{}),
		runDone:   make(chan struct{}),
	}
	for i := range s.tasks {
		s.tasks[i].slot = i
		s.tasks[i].done = make(chan struct{}, 1)
		if i < c.QueueDepth {
			s.free <- i
		}
	}
	s.tasks[c.QueueDepth].internal = true
	return s
}

// LUN returns the block device handle of the session's LUN.
func (s *Session) LUN() *LUN { return s.lun }

func (s *Session) logf(format string, args ...any) { s.cfg.Logf(format, args...) }

func (s *Session) setState(st string) {
	s.mu.Lock()
	s.state = st
	s.mu.Unlock()
}

// State is one of logging-in, serving, reconnecting, failed, closed.
func (s *Session) State() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// connect logs in on the portals in turn with capped exponential back-off, checks the
// LUN identity and starts a connection. first: Dial (stop at permanent errors).
func (s *Session) connect(ctx context.Context, first bool, rs *retryState) error {
	pol := s.cfg.Retry
	if rs.start.IsZero() {
		rs.start = time.Now()
	}
	backoff := pol.InitialBackoff
	redirect := ""
	var refused map[string]bool // portals that refused the first login for good
	for redirects := 0; ; {
		rs.attempts++
		attempt := rs.attempts
		addr := redirect
		if addr == "" {
			s.mu.Lock()
			addr = s.cfg.Portals[s.portalIx%len(s.cfg.Portals)]
			s.mu.Unlock()
		}
		err := s.tryPortal(ctx, addr)
		if err == nil {
			return nil
		}
		var re *redirectError
		if errors.As(err, &re) && redirects < 16 {
			redirects++
			rs.attempts--
			s.logf("%v", err)
			redirect = re.addr
			if re.permanent {
				s.mu.Lock()
				s.cfg.Portals[s.portalIx%len(s.cfg.Portals)] = re.addr
				s.mu.Unlock()
				redirect = ""
			}
			continue
		}
		redirect = ""
		s.logf("iscsi: connect %s (attempt %d): %v", addr, attempt, err)
		if errors.Is(err, errIdentityChanged) {
			return err
		}
		// A refusal that retrying cannot cure (bad credentials, unknown target) ends
		// the first login only once every portal has refused: another portal
		// (iBFT target1) may still lead to the LUN.
		var le *LoginError
		if first && errors.As(err, &le) && le.Permanent() {
			if refused == nil {
				refused = map[string]bool{}
			}
			refused[addr] = true
			if len(refused) >= distinct(s.cfg.Portals) {
				return err
			}
		}
		if rs.exhausted(pol) {
			return fmt.Errorf("iscsi: giving up after %d attempts: %w", attempt, err)
		}
		// Next portal (iBFT target0/target1 fail over in turn).
		s.mu.Lock()
		s.portalIx++
		wrapped := s.portalIx%len(s.cfg.Portals) == 0
		s.mu.Unlock()
		if !wrapped && len(s.cfg.Portals) > 1 {
			continue
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("iscsi: connect: %w (last error: %v)", ctx.Err(), err)
		case <-s.closing:
			return ErrClosed
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, pol.MaxBackoff)
	}
}

func distinct(portals []string) int {
	seen := map[string]bool{}
	for _, p := range portals {
		seen[p] = true
	}
	return len(seen)
}

// retryState counts attempts since the session last made progress (a user command
// completed): a target that accepts logins but fails every command still ends a
// bounded policy.
type retryState struct {
	attempts int
	start    time.Time
	backoff  time.Duration // pause before the next reconnect without progress
}

func (rs *retryState) exhausted(pol RetryPolicy) bool {
	return pol.MaxAttempts > 0 && rs.attempts >= pol.MaxAttempts ||
		pol.MaxElapsed > 0 && time.Since(rs.start) >= pol.MaxElapsed
}

var errIdentityChanged = errors.New("iscsi: LUN identity changed")

// tryPortal dials, logs in, verifies the LUN and installs the new connection.
func (s *Session) tryPortal(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.LoginTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetKeepAlive(true)
		tc.SetKeepAlivePeriod(5 * time.Second)
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	// Session reinstatement (RFC 7143 §6.3.5): same ISID, TSIH 0. The target then
	// closes whatever is left of the old session and its tasks before ours run.
	s.mu.Lock()
	offer := s.chapOffer
	s.mu.Unlock()
	res, err := login(nc, &s.cfg, s.cfg.ISID, 0, 1, offer)
	if errors.Is(err, errCHAPA7) {
		nc.Close()
		s.mu.Lock()
		s.chapOffer = chapOfferNo7
		s.mu.Unlock()
		s.logf("iscsi: %v; logging in again without offering it", err)
		if nc, err = d.DialContext(ctx, "tcp", addr); err != nil {
			return err
		}
		if dl, ok := ctx.Deadline(); ok {
			nc.SetDeadline(dl)
		}
		res, err = login(nc, &s.cfg, s.cfg.ISID, 0, 1, chapOfferNo7)
	}
	if err != nil {
		nc.Close()
		return err
	}
	nc.SetDeadline(time.Time{})
	s.mu.Lock()
	s.gen++
	gen := s.gen
	s.mu.Unlock()
	c, err := newConn(s, nc, res, gen)
	if err != nil {
		nc.Close()
		return err
	}
	if err := s.checkIdentity(ctx, c); err != nil {
		c.fail(err)
		c.wg.Wait()
		return err
	}
	s.mu.Lock()
	if s.tsih != 0 {
		s.prevTSIH = s.tsih
	}
	s.tsih = res.tsih
	s.portal = addr
	s.conn = c
	s.state = "serving"
	s.mu.Unlock()
	close(c.release) // the writer now reissues unfinished commands, in order
	s.logf("iscsi: logged in to %s at %s (TSIH %d)", s.cfg.TargetName, addr, res.tsih)
	return nil
}

// checkIdentity reads VPD 0x83 and 0x80 on the new connection and compares them
// with what the LUN had at Dial: never reissue writes to a different disk.
func (s *Session) checkIdentity(ctx context.Context, c *conn) error {
	buf := make([]byte, 512)
	var id identity
	for _, page := range []byte{0x83, 0x80} {
		n, err := s.internalCmd(ctx, c, cdbInquiry(page, true, len(buf)), buf)
		if err != nil {
			var se *SCSIError
			if errors.As(err, &se) && se.Key == senseIllegalRequest {
				continue // page not supported
			}
			return fmt.Errorf("iscsi: identity check: %w", err)
		}
		p := string(vpdPayload(buf[:n]))
		if page == 0x83 {
			id.devID = p
		} else {
			id.serial = p
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.haveID {
		s.ident, s.haveID = id, true
		return nil
	}
	if id != s.ident {
		return fmt.Errorf("%w: was %v, now %v", errIdentityChanged, s.ident, id)
	}
	return nil
}

// internalCmd runs one command on connection c before it is released to users.
// It retries UNIT ATTENTION (a reinstated session reports one) a few times.
func (s *Session) internalCmd(ctx context.Context, c *conn, cd cdb, buf []byte) (int, error) {
	s.internalMu.Lock()
	defer s.internalMu.Unlock()
	t := &s.tasks[len(s.tasks)-1]
	for attempt := 0; ; attempt++ {
		t.prepare(cd, true, buf)
		if err := s.register(t); err != nil {
			return 0, err
		}
		select {
		case c.ctrl <- ctrlReq{kind: ctrlInternal, t: t, seq: t.seq}:
		case <-c.dead:
		}
		select {
		case <-t.done:
		case <-c.dead:
			s.deactivate(t)
			return 0, fmt.Errorf("connection lost: %v", c.err)
		case <-ctx.Done():
			s.deactivate(t)
			if err := c.windowError(0); err != nil {
				return 0, err
			}
			return 0, ctx.Err()
		}
		err := t.result("INQUIRY")
		var se *SCSIError
		if errors.As(err, &se) && se.Key == senseUnitAttention && attempt < 8 {
			continue
		}
		if err != nil {
			return 0, err
		}
		return len(buf) - int(max(t.resid, 0)), nil
	}
}

// register makes t active with a fresh ITT and submission order.
func (s *Session) register(t *task) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.failed != nil {
		return s.failed
	}
	s.seq++
	s.ittGen++
	t.seq = s.seq
	t.itt = uint32(t.slot) | (s.ittGen&0x7fff)<<16
	t.gen = 0
	s.active[t.slot] = true
	return nil
}

func (s *Session) deactivate(t *task) {
	s.mu.Lock()
	s.active[t.slot] = false
	s.mu.Unlock()
	select { // drop a completion that raced with us
	case <-t.done:
	default:
	}
}

// claim hands a submitted task to connection gen, unless it is stale or already there.
func (s *Session) claim(ref taskRef, gen uint64) bool {
	t := ref.t
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.active[t.slot] || t.seq != ref.seq || t.gen == gen {
		return false
	}
	t.gen = gen
	t.reset()
	return true
}

func (s *Session) stillSent(t *task, seq, gen uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active[t.slot] && t.seq == seq && t.gen == gen
}

// activeInOrder claims every unfinished user command for connection gen, oldest first.
func (s *Session) activeInOrder(gen uint64) []*task {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ts []*task
	for i := range s.tasks {
		t := &s.tasks[i]
		if s.active[i] && !t.internal && t.gen != gen {
			t.gen = gen
			t.reset()
			ts = append(ts, t)
		}
	}
	sort.Slice(ts, func(a, b int) bool { return ts[a].seq < ts[b].seq })
	if len(ts) > 0 && gen > 1 {
		s.logf("iscsi: reissuing %d unfinished commands", len(ts))
	}
	return ts
}

// complete finishes t if connection c still owns it.
func (s *Session) complete(c *conn, t *task) {
	s.mu.Lock()
	if !s.active[t.slot] || t.gen != c.gen {
		s.mu.Unlock()
		return
	}
	s.active[t.slot] = false
	s.mu.Unlock()
	if !t.internal {
		s.progress.Store(true)
	}
	t.done <- struct{}{}
}

// run watches the connection and recovers it until the session closes or fails.
func (s *Session) run() {
	defer close(s.runDone)
	// Close must not wait for a login in progress.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	rs := retryState{attempts: 1, start: time.Now()} // Dial's connection
	for {
		s.mu.Lock()
		c := s.conn
		s.mu.Unlock()
		select {
		case <-c.dead:
		case <-s.closing:
			return
		}
		c.wg.Wait()
		select {
		case <-s.closing:
			return
		default:
		}
		if s.progress.Swap(false) {
			rs = retryState{start: time.Now()}
		}
		if rs.exhausted(s.cfg.Retry) {
			s.failAll(fmt.Errorf("iscsi: giving up after %d attempts: %w", rs.attempts, c.err))
			return
		}
		if rs.attempts > 1 {
			// The last connection died before any command completed: back off
			// rather than hammer a target that fails every connection at once.
			rs.backoff = min(max(2*rs.backoff, s.cfg.Retry.InitialBackoff), s.cfg.Retry.MaxBackoff)
			select {
			case <-time.After(rs.backoff):
			case <-s.closing:
				return
			}
		}
		s.logf("iscsi: connection to %s lost: %v; reconnecting", s.cfg.TargetName, c.err)
		s.setState("reconnecting")
		s.reconnects.Add(1)
		if err := s.connect(ctx, false, &rs); err != nil {
			select {
			case <-s.closing:
				// Close cancelled the reconnect: it fails what waits with
				// ErrClosed, not with the cancelled dial's error.
				return
			default:
			}
			s.failAll(err)
			return
		}
	}
}

// failAll ends the session: every waiting command gets err.
func (s *Session) failAll(err error) {
	s.mu.Lock()
	if s.failed == nil {
		s.failed = err
		close(s.failedCh)
	}
	if !s.closed {
		s.state = "failed"
	}
	var waiting []*task
	for i := range s.tasks {
		if s.active[i] {
			s.active[i] = false
			s.tasks[i].err = s.failed
			waiting = append(waiting, &s.tasks[i])
		}
	}
	s.mu.Unlock()
	for _, t := range waiting {
		t.done <- struct{}{}
	}
}

// checkTimeouts aborts commands older than CommandTimeout on connection c.
func (s *Session) checkTimeouts(c *conn, now int64) {
	limit := s.cfg.CommandTimeout.Nanoseconds()
	var late []taskRef
	s.mu.Lock()
	for i := range s.tasks {
		t := &s.tasks[i]
		sent := t.sentAt.Load()
		if s.active[i] && t.gen == c.gen && sent != 0 && now-sent > limit && !t.internal && !t.aborting.Load() {
			t.aborting.Store(true)
			late = append(late, taskRef{t, t.seq})
		}
	}
	s.mu.Unlock()
	for _, ref := range late {
		go s.abort(c, ref)
	}
}

// abort runs ABORT TASK, then LOGICAL UNIT RESET, then drops the connection: each
// step that works makes the target forget the command, which is then reissued.
func (s *Session) abort(c *conn, ref taskRef) {
	s.tmfMu.Lock()
	defer s.tmfMu.Unlock()
	if !s.stillSent(ref.t, ref.seq, c.gen) {
		return
	}
	s.logf("iscsi: command ITT 0x%x timed out after %v; aborting", ref.t.itt, s.cfg.CommandTimeout)
	if r, ok := s.tmf(c, tmfAbortTask, ref.t.itt, ref.t.cmdSN); ok && (r == 0 || r == 1) {
		s.requeue(c, ref)
		return
	}
	s.logf("iscsi: ABORT TASK failed; resetting the LUN")
	if r, ok := s.tmf(c, tmfLogicalReset, reservedTag, 0); ok && r == 0 {
		s.mu.Lock()
		var refs []taskRef
		for i := range s.tasks {
			t := &s.tasks[i]
			if s.active[i] && t.gen == c.gen && !t.internal {
				refs = append(refs, taskRef{t, t.seq})
			}
		}
		s.mu.Unlock()
		for _, r := range refs {
			s.requeue(c, r)
		}
		return
	}
	c.fail(errors.New("iscsi: LUN reset failed after a command timeout"))
}

func (s *Session) tmf(c *conn, fn byte, ref uint32, refCmdSN uint32) (byte, bool) {
	select {
	case <-c.tmfResp:
	default:
	}
	itt := 0x80000000 | 0x4000 | uint32(fn)
	select {
	case c.ctrl <- ctrlReq{kind: ctrlTMF, fn: fn, itt: itt, refITT: ref, ttt: refCmdSN}:
	case <-c.dead:
		return 0, false
	}
	select {
	case r := <-c.tmfResp:
		return r, true
	case <-time.After(s.cfg.NopTimeout):
	case <-c.dead:
	}
	return 0, false
}

// requeue resends a command the target no longer holds on the same connection.
func (s *Session) requeue(c *conn, ref taskRef) {
	s.mu.Lock()
	ok := s.active[ref.t.slot] && ref.t.seq == ref.seq && ref.t.gen == c.gen
	if ok {
		ref.t.gen = 0
	}
	s.mu.Unlock()
	if ok {
		select {
		case c.ctrl <- ctrlReq{kind: ctrlRequeue, t: ref.t, seq: ref.seq}:
		case <-c.dead: // the reconnect reissues it
		}
	}
}

// exec runs one command to completion, retrying what SCSI says to retry.
// It is the I/O hot path: the slot, its buffers and channels are all reused.
func (s *Session) exec(op string, cd cdb, read bool, buf []byte) (int, error) {
	var slot int
	select {
	case slot = <-s.free:
	case <-s.closing:
		return 0, ErrClosed
	}
	t := &s.tasks[slot]
	n, err := s.execSlot(t, op, cd, read, buf)
	s.free <- slot
	s.commands.Add(1)
	if err != nil {
		s.errs.Add(1)
	} else if read {
		s.readBytes.Add(uint64(n))
	} else {
		s.writeBytes.Add(uint64(len(buf)))
	}
	return n, err
}

func (s *Session) execSlot(t *task, op string, cd cdb, read bool, buf []byte) (int, error) {
	backoff := time.Millisecond
	for attempt := 0; ; attempt++ {
		t.prepare(cd, read, buf)
		if err := s.register(t); err != nil {
			return 0, err
		}
		select {
		case s.cmdCh <- taskRef{t, t.seq}:
		case <-s.failedCh: // failAll completes t
		}
		<-t.done
		err := t.result(op)
		if err == nil {
			n := len(buf)
			if read && t.resid > 0 {
				n -= int(min(t.resid, int64(n)))
			}
			return n, nil
		}
		var se *SCSIError
		if !errors.As(err, &se) || attempt >= 200 {
			return 0, err
		}
		switch {
		case se.Status == statusCheckCondition && se.Key == senseUnitAttention:
			// Power on, reset, parameters changed: retry at once.
			continue
		case se.Status == statusBusy || se.Status == statusTaskSetFull ||
			se.Status == statusCheckCondition && (se.Key == senseAbortedCommand ||
				se.Key == senseNotReady && se.ASC == 0x04 && se.ASCQ != 0x02):
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		return 0, err
	}
}

// result turns the task's outcome into an error.
func (t *task) result(op string) error {
	if t.err != nil {
		return t.err
	}
	if t.response != 0 {
		return fmt.Errorf("iscsi: %s: target failure (response 0x%02x)", op, t.response)
	}
	if t.status == statusGood {
		return nil
	}
	e := &SCSIError{Op: op, Status: t.status}
	if t.status == statusCheckCondition {
		e.Key, e.ASC, e.ASCQ, _ = parseSense(t.sense[:t.senseLen])
	}
	return e
}

// Close logs out and ends the session; commands still waiting get ErrClosed.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.state = "closed"
	c := s.conn
	s.mu.Unlock()
	close(s.closing) // first, so that the target closing the socket is no loss
	var err error
	if c != nil && !c.isDead() {
		err = s.logout(c)
	}
	if c != nil {
		c.fail(errConnClosed)
		c.wg.Wait()
	}
	<-s.runDone
	s.failAll(ErrClosed)
	return err
}

func (s *Session) logout(c *conn) error {
	select {
	case c.ctrl <- ctrlReq{kind: ctrlLogout, itt: 0x80000000 | 0x2000}:
	case <-c.dead:
		return nil
	}
	select {
	case r := <-c.logoutResp:
		if r != 0 {
			return fmt.Errorf("iscsi: logout: response %d", r)
		}
		return nil
	case <-time.After(5 * time.Second):
		return errors.New("iscsi: logout: no response in 5s")
	case <-c.dead:
		return nil
	}
}

// Stats returns the session counters.
func (s *Session) Stats() Stats {
	return Stats{
		Reconnects: s.reconnects.Load(),
		Commands:   s.commands.Load(),
		ReadBytes:  s.readBytes.Load(),
		WriteBytes: s.writeBytes.Load(),
		Errors:     s.errs.Load(),
	}
}

// Params returns the session identity, state and every negotiated key, sorted by
// key, for the status file. It never contains secrets.
func (s *Session) Params() []KV {
	s.mu.Lock()
	defer s.mu.Unlock()
	kv := []KV{
		{"isid", hex.EncodeToString(s.cfg.ISID[:])},
		{"tsih", strconv.Itoa(int(s.tsih))},
		{"state", s.state},
		{"portal", s.portal},
		{"target", s.cfg.TargetName},
		{"initiator", s.cfg.InitiatorName},
		{"lun", strconv.FormatUint(s.cfg.LUN, 10)},
	}
	if s.prevTSIH != 0 {
		kv = append(kv, KV{"previous_tsih", strconv.Itoa(int(s.prevTSIH))})
	}
	if s.conn != nil {
		for k, v := range s.conn.params {
			kv = append(kv, KV{k, v})
		}
	}
	slices.SortFunc(kv, func(a, b KV) int {
		if a.Key < b.Key {
			return -1
		}
		if a.Key > b.Key {
			return 1
		}
		return 0
	})
	return kv
}
