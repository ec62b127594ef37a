package iscsi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// connect logs in on the portals in turn with capped exponential back-off, checks the
// LUN identity and starts a connection. first: Dial, which stops at permanent errors
// whatever the policy.
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
		// A refusal that retrying cannot cure (IsPermanent: bad credentials, unknown
		// target, a required digest refused, a malformed login response) ends the
		// first login, and a reconnect under a bounded policy, once every portal
		// has refused: another portal (iBFT target1) may still lead to the LUN.
		// A reconnect under the unbounded policy (a root device) goes on at the
		// slowest pace instead: its I/O waits for the target to be fixed, while
		// giving up would fail it (a target being restarted or reconfigured
		// answers "not found", or with its defaults, for a moment).
		if IsPermanent(err) {
			if refused == nil {
				refused = map[string]bool{}
			}
			refused[addr] = true
			if len(refused) >= distinct(s.cfg.Portals) {
				if first || pol.bounded() {
					return err
				}
				backoff = pol.MaxBackoff
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

// bounded reports whether the policy ever gives up.
func (pol RetryPolicy) bounded() bool { return pol.MaxAttempts > 0 || pol.MaxElapsed > 0 }

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
	res, err := login(nc, &s.cfg, s.cfg.ISID, 0, 1)
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
		if _, err := s.register(t); err != nil {
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
