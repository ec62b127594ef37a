package iscsi

// Ending a connection on purpose, and what the target says outside the commands:
// Idle (the machine's last moments), the Async Message events (RFC 7143 §11.9), and
// a capacity change.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

var (
	errIdle         = errors.New("iscsi: logged out (idle until the next command)")
	errTargetLogout = errors.New("iscsi: logged out at the target's request")
)

// Idle logs the session out and leaves it so, losing nothing: the commands already
// sent are answered first (until ctx ends), those not yet sent wait, and the next
// command logs in again (a new session, as after a lost connection). It is for a
// machine's last moments: the target sees a Logout, not a connection that vanishes,
// and the root filesystem, read-only by then, may still read a block.
func (s *Session) Idle(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.idle = true
	c := s.conn
	s.mu.Unlock()
	if c == nil || c.isDead() {
		return nil // run sees idle before it logs in again
	}
	return s.logoutConn(ctx, c, errIdle)
}

// logoutConn ends connection c with a Logout: no new command goes out on it, the
// commands it sent are answered (or ctx ends), then Logout (close the session) and
// its response. Commands not yet answered are reissued on the next connection, as
// after any loss. It records the response's Time2Wait for run.
func (s *Session) logoutConn(ctx context.Context, c *conn, why error) error {
	c.wmu.Lock()
	c.draining.Store(true)
	c.direct = false
	c.wmu.Unlock()
	select {
	case c.flushKick <- struct{}{}: // the writer looks again
	default:
	}
	tick := time.NewTicker(5 * time.Millisecond)
drain:
	for s.sentOn(c.gen) > 0 {
		select {
		case <-tick.C:
		case <-ctx.Done():
			break drain
		case <-c.dead:
			break drain
		}
	}
	tick.Stop()
	defer c.fail(why)
	select {
	case c.ctrl <- ctrlReq{kind: ctrlLogout, itt: 0x80000000 | 0x2000}:
	case <-c.dead:
		return fmt.Errorf("iscsi: logout: connection lost: %v", c.err)
	}
	select {
	case r := <-c.logoutResp:
		if r != 0 {
			return fmt.Errorf("iscsi: logout: response %d", r)
		}
	case <-time.After(5 * time.Second):
		return errors.New("iscsi: logout: no response in 5s")
	case <-c.dead:
		select { // the target may close the connection right after its response
		case r := <-c.logoutResp:
			if r != 0 {
				return fmt.Errorf("iscsi: logout: response %d", r)
			}
		default:
			return fmt.Errorf("iscsi: logout: connection lost: %v", c.err)
		}
	}
	wait := time.Duration(c.logoutWait.Load()) * time.Second
	s.mu.Lock()
	s.reconnectWait = wait
	s.mu.Unlock()
	s.logf("iscsi: logged out of %s (Time2Wait %v, Time2Retain %d s)", s.cfg.TargetName, wait, c.logoutRetain.Load())
	return nil
}

// sentOn counts the user commands sent on connection gen and not yet answered.
func (s *Session) sentOn(gen uint64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for i := range s.tasks {
		if t := &s.tasks[i]; s.active[i] && t.gen == gen && t.sentAt.Load() != 0 {
			n++
		}
	}
	return n
}

// takeReconnectWait returns (and clears) the Time2Wait the target asked for.
func (s *Session) takeReconnectWait() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.reconnectWait
	s.reconnectWait = 0
	return d
}

// waitIfIdle waits, when the session was logged out by Idle, for the next command
// (register wakes it) or the session's end, which it reports.
func (s *Session) waitIfIdle() (closing bool) {
	s.mu.Lock()
	idle := s.idle
	if idle {
		s.state = "idle"
	}
	s.mu.Unlock()
	if !idle {
		return false
	}
	select {
	case <-s.wake:
	case <-s.closing:
		return true
	}
	s.mu.Lock()
	s.idle = false
	s.mu.Unlock()
	s.logf("iscsi: a command after the logout: logging in to %s again", s.cfg.TargetName)
	return false
}

// wakeLocked tells an idle session that a command waits (s.mu held).
func (s *Session) wakeLocked() {
	if s.idle {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// asyncEvent handles an Async Message (RFC 7143 §11.9.1) on the reader. An error
// ends the connection.
func (c *conn) asyncEvent(h *bhs, data []byte) error {
	p2 := binary.BigEndian.Uint16(h[40:]) // Time2Wait (events 2, 3)
	p3 := binary.BigEndian.Uint16(h[42:]) // Time2Retain (2, 3); seconds to act (1, 4)
	switch ev := h[36]; ev {
	case 0: // a SCSI event: the sense data says what
		if len(data) >= 2 {
			n := min(int(binary.BigEndian.Uint16(data)), len(data)-2)
			if key, asc, ascq, ok := parseSense(data[2 : 2+n]); ok {
				c.s.noteSense(key, asc, ascq)
			}
		}
		return nil
	case 1: // a Logout, within p3 seconds; run sends it (not the reader: it waits)
		c.s.logf("iscsi: %s asks for a logout within %d s", c.s.cfg.TargetName, p3)
		select {
		case c.logoutAsked <- time.Duration(p3) * time.Second:
		default:
		}
		return nil
	case 2, 3: // it drops this connection (2) or all of the session's (3)
		wait := time.Duration(p2) * time.Second
		c.s.mu.Lock()
		c.s.reconnectWait = wait
		c.s.mu.Unlock()
		return fmt.Errorf("iscsi: target drops the connection (async event %d; Time2Wait %d s, Time2Retain %d s)", ev, p2, p3)
	case 4:
		// Parameter negotiation: nothing to renegotiate at ErrorRecoveryLevel 0.
		return nil
	default:
		return fmt.Errorf("iscsi: target drops the connection (async event %d)", ev)
	}
}

// noteSense looks at sense data the target sent (with a command's status or in an
// Async Message) for a capacity change: UNIT ATTENTION, CAPACITY DATA HAS CHANGED.
func (s *Session) noteSense(key, asc, ascq byte) {
	if key == senseUnitAttention && asc == 0x2a && ascq == 0x09 {
		s.logf("iscsi: %s reports that the LUN's capacity changed", s.cfg.TargetName)
		select {
		case s.capacity <- struct{}{}:
		default:
		}
	}
}

// noteError passes a command's sense data to noteSense.
func (s *Session) noteError(err error) {
	var se *SCSIError
	if errors.As(err, &se) && se.Status == statusCheckCondition {
		s.noteSense(se.Key, se.ASC, se.ASCQ)
	}
}

// CapacityChanged delivers a value when the target reports that the LUN's capacity
// changed (an Async Message, or a command's UNIT ATTENTION 2A/09); LUN.Refresh
// reads the new one.
func (s *Session) CapacityChanged() <-chan struct{} { return s.capacity }

// Refresh reads the LUN's capacity again and returns its size in bytes; I/O goes on
// meanwhile, and Size follows. A changed block size is refused (and nothing
// changes): the device's geometry cannot move under a mounted filesystem.
func (l *LUN) Refresh() (int64, error) {
	buf := make([]byte, 32)
	n, err := l.s.exec("READ CAPACITY(16)", cdbReadCapacity16(), true, buf)
	var blocks uint64
	var bs int
	if err == nil && n >= 12 {
		blocks, bs = binary.BigEndian.Uint64(buf)+1, int(binary.BigEndian.Uint32(buf[8:]))
	} else {
		if _, err := l.s.exec("READ CAPACITY(10)", cdbReadCapacity10(), true, buf[:8]); err != nil {
			return l.Size(), err
		}
		blocks, bs = uint64(binary.BigEndian.Uint32(buf))+1, int(binary.BigEndian.Uint32(buf[4:]))
	}
	if bs != l.blockSize {
		return l.Size(), fmt.Errorf("iscsi: the LUN's block size changed from %d to %d", l.blockSize, bs)
	}
	l.blocks.Store(blocks)
	return l.Size(), nil
}
