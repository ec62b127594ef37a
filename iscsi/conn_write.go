package iscsi

import (
	"runtime"
	"sync/atomic"
)

// ctrl kinds sent to the writer outside the command window.
const (
	ctrlNOPReply = iota // answer a target's NOP-In ping
	ctrlPing            // our NOP-Out ping
	ctrlInternal        // an internal command (identity check after reconnect)
	ctrlTMF             // task management request
	ctrlLogout
	ctrlRequeue // resend a command the target aborted
)

type ctrlReq struct {
	kind   int
	ttt    uint32
	itt    uint32
	fn     byte   // TMF function
	refITT uint32 // TMF referenced task
	t      *task
	seq    uint64
	data   []byte  // NOP reply: the ping data to echo (a copy; usually none)
	lun    [8]byte // NOP reply: the ping's LUN, echoed
}

// r2tReq asks the writer to send Data-Out for one R2T.
type r2tReq struct {
	t        *task
	seq      uint64
	ttt      uint32
	off, len int
}

func (c *conn) writeLoop() {
	defer c.wg.Done()
	if err := c.writeRun(); err != nil {
		c.fail(err)
	}
}

func (c *conn) windowOK() bool {
	// CmdSN may go up to MaxCmdSN inclusive.
	return !c.windowKnown.Load() || !snLess(c.maxCmdSN.Load(), c.cmdSN)
}

// writerFlushHook, when set (by tests), runs when the writer goroutine is about to
// write what callers and it queued.
var writerFlushHook atomic.Pointer[func()]

// writeRun is the writer goroutine. It holds wmu except while it waits, so callers
// that find the connection idle (direct) send their own commands in between.
func (c *conn) writeRun() error {
	s := c.s
	// pending is a FIFO over one backing array (head moves, and both reset when it
	// drains) so queueing commands does not allocate.
	pending := make([]*task, 0, len(s.tasks))
	head := 0
	var internal *task // an internal command, sent before the release
	released := false
	yielded := false
	c.wmu.Lock()
	defer func() {
		c.direct = false // a dead connection takes no more commands
		c.wmu.Unlock()
	}()
	for {
		var cmdCh chan taskRef
		var release chan struct{}
		draining := c.draining.Load() // a Logout is coming: no new command
		next := internal
		if next == nil && released && head < len(pending) && !draining {
			next = pending[head]
		}
		if next != nil {
			if !c.windowOK() && c.blockedSince.Load() == 0 {
				// Say we wait before looking again: either the reader sees the flag
				// and wakes us, or we see its new MaxCmdSN here.
				c.blockedSince.Store(nanotime())
			}
			if c.windowOK() {
				c.blockedSince.Store(0)
				if next == internal {
					internal = nil
				} else if head++; head == len(pending) {
					pending, head = pending[:0], 0
				}
				if err := c.sendCmd(next); err != nil {
					return err
				}
				continue
			}
		}
		if released {
			if head == len(pending) && !draining {
				cmdCh = s.cmdCh
			}
		} else {
			release = c.release
		}
		// Callers may send for themselves only when nothing older waits here, so a
		// reissued or window-blocked command is never overtaken.
		c.direct = released && next == nil && !draining
		// About to wait: send what is queued unless more work is already here, so
		// back-to-back PDUs share one write. A caller waiting for wmu flushes after
		// its own command, so the writer leaves the flush to it.
		if len(c.dataOut) == 0 && len(c.ctrl) == 0 && (cmdCh == nil || len(cmdCh) == 0) && c.senders.Load() == 0 {
			if len(c.wr.out) > 0 && !yielded {
				// Callers just woken by responses are about to queue their next
				// command: let them run first and send it all in one write (this
				// took writes per command at QD 32 from 1.0 to about 0.35).
				yielded = true
				c.wmu.Unlock()
				runtime.Gosched()
				c.wmu.Lock()
				continue
			}
			if len(c.wr.out) > 0 {
				if h := writerFlushHook.Load(); h != nil {
					(*h)()
				}
			}
			if err := c.wr.flush(); err != nil {
				return err
			}
		}
		yielded = false
		c.wmu.Unlock()
		select {
		case <-release:
			c.wmu.Lock()
			released = true
			pending = append(pending[:0], s.activeInOrder(c.gen)...)
		case ref := <-cmdCh:
			c.wmu.Lock()
			if s.claim(ref, c.gen) {
				pending = append(pending, ref.t)
			}
		case r := <-c.dataOut:
			c.wmu.Lock()
			if err := c.sendDataOut(r); err != nil {
				return err
			}
		case q := <-c.ctrl:
			c.wmu.Lock()
			if q.kind == ctrlInternal {
				if s.claim(taskRef{q.t, q.seq}, c.gen) {
					internal = q.t
				}
				continue
			}
			if err := c.sendCtrl(q, &pending); err != nil {
				return err
			}
		case <-c.windowOpen:
			c.wmu.Lock()
		case <-c.flushKick:
			c.wmu.Lock()
		case <-c.dead:
			c.wmu.Lock()
			return nil
		}
	}
}

// sendDirect sends a caller's command from the caller's goroutine when the writer
// has nothing older queued and the window is open: the hand-off to the writer
// goroutine cost a wake-up per I/O. It reports false when the command must go
// through the writer instead. The last of several callers waiting for wmu flushes
// for all of them, so commands issued together still share one write.
func (c *conn) sendDirect(ref taskRef, deferFlush bool) bool {
	c.senders.Add(1)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	sent := false
	var err error
	if c.direct && c.windowOK() && c.s.claim(ref, c.gen) {
		// Once claimed the command belongs to this connection: if sending fails,
		// recovery reissues it on the next one.
		sent = true
		err = c.sendCmd(ref.t)
	}
	switch {
	case c.senders.Add(-1) != 0 || err != nil || len(c.wr.out) == 0:
		// Another caller waits for wmu and flushes after its own command.
	case deferFlush && c.inflight.commands.Load() > 1:
		// A caller that starts many commands from one goroutine (execAsync) leaves
		// the flush to the writer, which on a busy CPU runs after the caller queued
		// the rest of its batch: one write for many commands. A command alone in
		// flight (a booting system's reads, one after another) has no batch to wait
		// for: handing its flush to the writer cost a channel send, a wake-up and a
		// goroutine switch per read.
		select {
		case c.flushKick <- struct{}{}:
		default:
		}
	default:
		// Callers waiting on their own commands each flush: the writer's wake-up
		// would cost more than the write it saves.
		err = c.wr.flush()
	}
	if err != nil {
		c.fail(err)
	}
	return sent
}

func (c *conn) sendCmd(t *task) error {
	s := c.s
	h := &c.hdr
	h.reset(opSCSICmd)
	wlen := t.writeLen()
	var imm []byte
	if wlen > 0 && c.immediate {
		imm = t.buf[:min(wlen, c.firstBurst, c.maxSend)]
	}
	// Unsolicited Data-Out follows up to FirstBurstLength when InitialR2T=No.
	burst := min(wlen, c.firstBurst)
	unsolicited := wlen > 0 && !c.initialR2T && len(imm) < burst
	flags := byte(0x01) // attribute SIMPLE
	if !unsolicited {
		// F=1 says no unsolicited Data-Out follows (RFC 7143 §11.3.1).
		flags |= flagFinal
	}
	if t.read && t.size > 0 {
		flags |= 0x40
	} else if wlen > 0 {
		flags |= 0x20
	}
	h[1] = flags
	copy(h[8:16], s.lunBytes[:])
	h.setU32(16, t.itt)
	h.setU32(20, uint32(t.size))
	h.setU32(24, c.cmdSN)
	h.setU32(28, c.expStatSN.Load())
	copy(h[32:48], t.cdb.b[:])
	t.cmdSN = c.cmdSN
	c.cmdSN++
	t.sentAt.Store(nanotime())
	c.inflight.sent(t)
	if err := c.wr.writePDU(h, imm); err != nil {
		return err
	}
	if !unsolicited {
		return nil
	}
	return c.sendData(t, reservedTag, len(imm), burst-len(imm))
}

func (c *conn) sendDataOut(r r2tReq) error {
	if !c.s.stillSent(r.t, r.seq, c.gen) {
		return nil
	}
	return c.sendData(r.t, r.ttt, r.off, r.len)
}

// sendData sends buf[off:off+n] of t as one Data-Out sequence.
func (c *conn) sendData(t *task, ttt uint32, off, n int) error {
	h := &c.hdr
	for sn := uint32(0); n > 0; sn++ {
		chunk := min(n, c.maxSend)
		h.reset(opDataOut)
		if chunk == n {
			h[1] = flagFinal
		}
		copy(h[8:16], c.s.lunBytes[:])
		h.setU32(16, t.itt)
		h.setU32(20, ttt)
		h.setU32(28, c.expStatSN.Load())
		h.setU32(36, sn)
		h.setU32(40, uint32(off))
		if err := c.wr.writePDU(h, t.buf[off:off+chunk]); err != nil {
			return err
		}
		off += chunk
		n -= chunk
	}
	return nil
}

func (c *conn) sendCtrl(q ctrlReq, pending *[]*task) error {
	h := &c.hdr
	switch q.kind {
	case ctrlNOPReply, ctrlPing:
		h.reset(opNOPOut | flagImmediate)
		h[1] = flagFinal
		itt, ttt := uint32(reservedTag), q.ttt
		if q.kind == ctrlPing {
			itt, ttt = 0x80000000|uint32(c.gen&0x7fff), reservedTag
		}
		copy(h[8:16], q.lun[:])
		data := q.data
		h.setU32(16, itt)
		h.setU32(20, ttt)
		h.setU32(24, c.cmdSN)
		h.setU32(28, c.expStatSN.Load())
		return c.wr.writePDU(h, data)
	case ctrlRequeue:
		if c.s.claim(taskRef{q.t, q.seq}, c.gen) {
			*pending = append(*pending, q.t)
		}
		return nil
	case ctrlTMF:
		h.reset(opTMFReq | flagImmediate)
		h[1] = flagFinal | q.fn
		copy(h[8:16], c.s.lunBytes[:])
		h.setU32(16, q.itt)
		h.setU32(20, q.refITT)
		h.setU32(24, c.cmdSN)
		h.setU32(28, c.expStatSN.Load())
		if q.fn == tmfAbortTask {
			h.setU32(32, q.ttt) // RefCmdSN travels in ttt
		}
		return c.wr.writePDU(h, nil)
	case ctrlLogout:
		h.reset(opLogoutReq | flagImmediate)
		h[1] = flagFinal // reason 0: close the session
		h.setU32(16, q.itt)
		h.setU32(24, c.cmdSN)
		h.setU32(28, c.expStatSN.Load())
		return c.wr.writePDU(h, nil)
	}
	return nil
}
