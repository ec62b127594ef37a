package iscsi

import (
	"bytes"
	"encoding/binary"
)

func (c *conn) readLoop() {
	defer c.wg.Done()
	for {
		if err := c.readOne(); err != nil {
			c.fail(err)
			return
		}
	}
}

func (c *conn) readOne() error {
	if err := c.rd.readHeader(); err != nil {
		return err
	}
	c.lastRecv.Store(nanotime())
	h := &c.rd.hdr
	op := h.opcode()
	if op != opLoginResp {
		c.updateWindow(h)
	}
	switch op {
	case opDataIn:
		return c.dataIn(h)
	case opSCSIResp:
		return c.scsiResp(h)
	case opR2T:
		return c.r2t(h)
	case opNOPIn:
		return c.nopIn(h)
	case opAsyncMsg:
		c.statusSeen(h)
		n := h.dataLen()
		if err := c.rd.readData(c.scratch[:n]); err != nil {
			return err
		}
		return c.asyncEvent(h, c.scratch[:n])
	case opReject:
		c.statusSeen(h)
		c.rd.discardData(c.scratch)
		return protoErr("target rejected a PDU (reason 0x%02x)", h[2])
	case opTMFResp:
		c.statusSeen(h)
		if err := c.rd.discardData(c.scratch); err != nil {
			return err
		}
		select {
		case c.tmfResp <- h[2]:
		default:
		}
		return nil
	case opLogoutResp:
		c.statusSeen(h)
		c.rd.discardData(c.scratch)
		c.logoutWait.Store(uint32(binary.BigEndian.Uint16(h[40:])))
		c.logoutRetain.Store(uint32(binary.BigEndian.Uint16(h[42:])))
		select {
		case c.logoutResp <- h[2]:
		default:
		}
		return nil
	}
	return protoErr("unexpected %s in full-feature phase", opName(op))
}

// lookup finds the active task for an ITT, or nil.
func (c *conn) lookup(itt uint32) *task {
	s := c.s
	slot := int(itt & 0xffff)
	if slot >= len(s.tasks) {
		return nil
	}
	t := &s.tasks[slot]
	s.mu.Lock()
	ok := s.active[slot] && t.itt == itt && t.gen == c.gen
	s.mu.Unlock()
	if !ok {
		return nil
	}
	return t
}

func (c *conn) dataIn(h *bhs) error {
	n := h.dataLen()
	t := c.lookup(h.itt())
	if t == nil || !t.read {
		// Data for a command we no longer track (aborted): drop it.
		return c.rd.discardData(c.scratch)
	}
	off := int(h.u32(40))
	if off < 0 || off+n > t.size || n > t.size {
		return protoErr("Data-In offset %d + %d beyond the %d-byte buffer", off, n, t.size)
	}
	if t.pipe != nil {
		// A pipe takes data only in order, which DataPDUInOrder=Yes promises.
		if off != t.received {
			return protoErr("Data-In at offset %d, expected %d (DataPDUInOrder=Yes)", off, t.received)
		}
		if off == 0 {
			t.pipe.Reset() // what an earlier attempt left
		}
		if err := c.rd.readDataTo(t.pipe, n, c.scratch); err != nil {
			return err
		}
	} else {
		// Straight into the caller's buffer: no copy on the read path.
		if err := c.rd.readData(t.buf[off : off+n]); err != nil {
			return err
		}
		if n >= largeSegment {
			c.rd.headerNext(0) // the next segment is likely large too
		}
	}
	t.received += n
	if h.flags()&0x01 == 0 { // S bit: status collapsed into this Data-In
		return nil
	}
	if h.flags()&0x80 == 0 {
		return protoErr("Data-In with status but without F bit")
	}
	c.statusSeen(h)
	t.status = h[3]
	t.resid = residual(h)
	c.s.complete(c, t)
	return nil
}

func residual(h *bhs) int64 {
	r := int64(h.u32(44))
	switch {
	case h.flags()&0x04 != 0: // O: overflow
		return -r
	case h.flags()&0x02 != 0: // U: underflow
		return r
	}
	return 0
}

func (c *conn) scsiResp(h *bhs) error {
	c.statusSeen(h)
	n := h.dataLen()
	if err := c.rd.readData(c.scratch[:n]); err != nil {
		return err
	}
	t := c.lookup(h.itt())
	if t == nil {
		return nil
	}
	t.response = h[2]
	t.status = h[3]
	t.resid = residual(h)
	t.senseLen = 0
	if n >= 2 {
		sl := int(binary.BigEndian.Uint16(c.scratch[:2]))
		sl = min(sl, n-2)
		t.senseLen = copy(t.sense[:], c.scratch[2:2+sl])
	}
	c.s.complete(c, t)
	return nil
}

func (c *conn) r2t(h *bhs) error {
	if err := c.rd.discardData(c.scratch); err != nil {
		return err
	}
	t := c.lookup(h.itt())
	if t == nil {
		return nil
	}
	off, n := int(h.u32(40)), int(h.u32(44))
	if t.read || off < 0 || n <= 0 || off+n > len(t.buf) || n > len(t.buf) || n > c.maxBurst {
		return protoErr("R2T for %d bytes at %d outside the %d-byte write (MaxBurstLength %d)", n, off, len(t.buf), c.maxBurst)
	}
	select {
	case c.dataOut <- r2tReq{t: t, seq: t.seq, ttt: h.ttt(), off: off, len: n}:
	default:
		return protoErr("more R2Ts outstanding than MaxOutstandingR2T allows")
	}
	return nil
}

func (c *conn) nopIn(h *bhs) error {
	n := h.dataLen()
	if n > len(c.nopData) {
		// Echo at most what fits; a NOP-In carrying more than 4 KiB is odd but legal.
		if err := c.rd.readData(c.scratch[:n]); err != nil {
			return err
		}
		n = 0
	} else if err := c.rd.readData(c.nopData[:n]); err != nil {
		return err
	}
	if h.itt() != reservedTag {
		c.pingSent.Store(0) // our ping came back
		c.statusSeen(h)
	}
	if h.ttt() != reservedTag {
		// The target pings us: answer with its TTT (RFC 7143 §11.18).
		c.s.targetPings.Add(1)
		select {
		case c.ctrl <- ctrlReq{kind: ctrlNOPReply, ttt: h.ttt(), data: bytes.Clone(c.nopData[:n]), lun: [8]byte(h[8:16])}:
		default:
		}
	}
	return nil
}
