package iscsi

import (
	"context"
	"errors"
	"fmt"
	"time"
)

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
		case within := <-c.logoutAsked:
			// Event 1: log out (before the target's deadline), then in again.
			ctx, cancel := context.WithTimeout(context.Background(), max(within-time.Second, time.Second))
			if err := s.logoutConn(ctx, c, errTargetLogout); err != nil {
				s.logf("%v", err)
			}
			cancel()
		case <-s.closing:
			return
		}
		c.wg.Wait()
		select {
		case <-s.closing:
			return
		default:
		}
		if s.cfg.NoReconnect && !errors.Is(c.err, errIdle) && !errors.Is(c.err, errTargetLogout) {
			s.failAll(fmt.Errorf("iscsi: connection to %s lost: %w", s.portalName(), c.err))
			return
		}
		if s.progress.Swap(false) {
			rs = retryState{start: time.Now()}
		}
		if s.waitIfIdle() {
			return
		}
		if wait := s.takeReconnectWait(); wait > 0 {
			s.logf("iscsi: waiting Time2Wait %v before logging in to %s again", wait, s.cfg.TargetName)
			s.setState("reconnecting")
			select {
			case <-time.After(wait):
			case <-s.closing:
				return
			}
		}
		if errors.Is(c.err, errIdle) || errors.Is(c.err, errTargetLogout) {
			// Ended on purpose: no failure to count or back off from.
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
		s.signal(t)
	}
}

// watch pings an idle target and drops the connection when it does not answer.
func (c *conn) watch() {
	defer c.wg.Done()
	cfg := &c.s.cfg
	tick := time.NewTicker(max(min(cfg.NopInterval, cfg.NopTimeout, cfg.CommandTimeout)/4, 20*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-c.dead:
			return
		case <-tick.C:
		}
		now := nanotime()
		if sent := c.pingSent.Load(); sent != 0 {
			if time.Duration(now-sent) > cfg.NopTimeout {
				c.fail(fmt.Errorf("iscsi: target did not answer NOP-Out within %v", cfg.NopTimeout))
				return
			}
			continue
		}
		if err := c.windowError(cfg.CommandTimeout); err != nil {
			c.fail(err)
			return
		}
		if time.Duration(now-c.lastRecv.Load()) >= cfg.NopInterval {
			c.pingSent.Store(now)
			select {
			case c.ctrl <- ctrlReq{kind: ctrlPing}:
			default:
			}
		}
		c.s.checkTimeouts(c, now)
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

// TMF functions (RFC 7143 §11.5.1).
const (
	tmfAbortTask    = 1
	tmfLogicalReset = 5
)

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
		c.inflight.done(ref.t) // the target forgot it: no response is due
		select {
		case c.ctrl <- ctrlReq{kind: ctrlRequeue, t: ref.t, seq: ref.seq}:
		case <-c.dead: // the reconnect reissues it
		}
	}
}
