package iscsi

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
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

// conn is one TCP connection in the full-feature phase with its reader, writer and
// liveness goroutines. A conn never comes back after it dies; recovery makes a new one.
type conn struct {
	s   *Session
	gen uint64
	nc  net.Conn
	rd  pduReader
	wr  pduWriter

	// Negotiated.
	maxSend    int // target's MaxRecvDataSegmentLength
	firstBurst int
	maxBurst   int
	immediate  bool
	initialR2T bool
	params     map[string]string

	cmdSN    uint32 // writer-owned
	expCmdSN atomic.Uint32
	maxCmdSN atomic.Uint32
	// windowKnown is false while the target has sent no valid MaxCmdSN: the window
	// is then bounded by the queue depth alone (a target sending only invalid
	// windows must be ignored, RFC 7143 §4.2.2.1, not obeyed).
	windowKnown  atomic.Bool
	blockedSince atomic.Int64 // when the writer began waiting for the window; 0 if not
	expStatSN    atomic.Uint32
	lastRecv     atomic.Int64
	pingSent     atomic.Int64 // 0 when no ping is outstanding

	dataOut    chan r2tReq
	ctrl       chan ctrlReq
	windowOpen chan struct{}
	release    chan struct{}
	tmfResp    chan byte
	logoutResp chan byte

	hdr     bhs // writer scratch
	nopData [4096]byte
	scratch []byte // reader scratch for sense and discarded data

	dead     chan struct{}
	deadOnce sync.Once
	err      error
	wg       sync.WaitGroup
}

func newConn(s *Session, nc net.Conn, res *loginResult, gen uint64) (*conn, error) {
	p := res.params
	num := func(k string) int {
		n, _ := strconv.Atoi(p[k])
		return n
	}
	c := &conn{
		s: s, gen: gen, nc: nc, params: p,
		maxSend:    num("TargetMaxRecvDataSegmentLength"),
		firstBurst: num("FirstBurstLength"),
		maxBurst:   num("MaxBurstLength"),
		immediate:  p["ImmediateData"] == "Yes",
		initialR2T: p["InitialR2T"] == "Yes",
		cmdSN:      res.expCmdSN,
		dataOut:    make(chan r2tReq, s.cfg.QueueDepth*16+16),
		ctrl:       make(chan ctrlReq, s.cfg.QueueDepth+16),
		windowOpen: make(chan struct{}, 1),
		release:    make(chan struct{}),
		tmfResp:    make(chan byte, 1),
		logoutResp: make(chan byte, 1),
		// Any segment up to our MaxRecvDataSegmentLength may land here.
		scratch: make([]byte, s.cfg.MaxRecvDataSegmentLength),
		dead:    make(chan struct{}),
	}
	if c.maxSend < 512 || c.firstBurst < 512 || c.maxBurst < 512 {
		return nil, fmt.Errorf("iscsi: negotiated sizes out of range: %v", p)
	}
	c.firstBurst = min(c.firstBurst, c.maxBurst)
	c.expCmdSN.Store(res.expCmdSN)
	c.maxCmdSN.Store(res.maxCmdSN)
	c.windowKnown.Store(!snLess(res.maxCmdSN, res.expCmdSN-1))
	c.expStatSN.Store(res.expStatSN)
	c.lastRecv.Store(nanotime())
	c.rd = pduReader{r: bufio.NewReaderSize(nc, 64<<10), maxData: s.cfg.MaxRecvDataSegmentLength,
		hdrDigest: p["HeaderDigest"] == "CRC32C", dataDigest: p["DataDigest"] == "CRC32C"}
	c.wr = pduWriter{w: nc, hdrDigest: c.rd.hdrDigest, dataDigest: c.rd.dataDigest}
	c.wg.Add(3)
	go c.readLoop()
	go c.writeLoop()
	go c.watch()
	return c, nil
}

// fail marks the connection dead once, with the first reason, and closes the socket so
// both loops stop.
func (c *conn) fail(err error) {
	c.deadOnce.Do(func() {
		c.err = err
		close(c.dead)
		c.nc.Close()
	})
}

func (c *conn) isDead() bool {
	select {
	case <-c.dead:
		return true
	default:
		return false
	}
}

// serial arithmetic (RFC 1982) on 32-bit sequence numbers.
func snLess(a, b uint32) bool { return a != b && int32(a-b) < 0 }

// updateWindow applies ExpCmdSN/MaxCmdSN from a target PDU (RFC 7143 §4.2.2.1).
func (c *conn) updateWindow(h *bhs) {
	exp, maxSN := h.expCmdSN(), h.maxCmdSN()
	if snLess(maxSN, exp-1) {
		return // MaxCmdSN < ExpCmdSN-1: ignore both
	}
	if snLess(c.expCmdSN.Load(), exp) {
		c.expCmdSN.Store(exp)
	}
	if !c.windowKnown.Load() || snLess(c.maxCmdSN.Load(), maxSN) {
		c.maxCmdSN.Store(maxSN)
		c.windowKnown.Store(true)
		// Wake the writer only when it waits for the window: most responses move
		// MaxCmdSN, and a wake-up per response costs more than the response.
		if c.blockedSince.Load() != 0 {
			select {
			case c.windowOpen <- struct{}{}:
			default:
			}
		}
	}
}

func (c *conn) statusSeen(h *bhs) {
	c.expStatSN.Store(h.statSN() + 1)
}

// ---- reader ----

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
		if err := c.rd.discardData(c.scratch); err != nil {
			return err
		}
		switch ev := h[36]; ev {
		case 0, 4: // SCSI async event, parameter renegotiation: nothing to do at ERL 0
			return nil
		case 1:
			return fmt.Errorf("iscsi: target requests logout (async event 1)")
		default:
			return fmt.Errorf("iscsi: target drops the connection (async event %d)", ev)
		}
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
	if off < 0 || off+n > len(t.buf) || n > len(t.buf) {
		return protoErr("Data-In offset %d + %d beyond the %d-byte buffer", off, n, len(t.buf))
	}
	// Straight into the caller's buffer: no copy on the read path.
	if err := c.rd.readData(t.buf[off : off+n]); err != nil {
		return err
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

// ---- writer ----

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

func (c *conn) writeRun() error {
	s := c.s
	// pending is a FIFO over one backing array (head moves, and both reset when it
	// drains) so queueing commands does not allocate.
	pending := make([]*task, 0, len(s.tasks))
	head := 0
	var internal *task // an internal command, sent before the release
	released := false
	yielded := false
	for {
		var cmdCh chan taskRef
		var release chan struct{}
		next := internal
		if next == nil && released && head < len(pending) {
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
			if head == len(pending) {
				cmdCh = s.cmdCh
			}
		} else {
			release = c.release
		}
		// About to wait: send what is queued unless more work is already here, so
		// back-to-back PDUs share one write.
		if len(c.dataOut) == 0 && len(c.ctrl) == 0 && (cmdCh == nil || len(cmdCh) == 0) {
			if len(c.wr.out) > 0 && !yielded {
				// Callers just woken by responses are about to queue their next
				// command: let them run first and send it all in one write (this
				// took writes per command at QD 32 from 1.0 to about 0.35).
				yielded = true
				runtime.Gosched()
				continue
			}
			if err := c.wr.flush(); err != nil {
				return err
			}
		}
		yielded = false
		select {
		case <-release:
			released = true
			pending = append(pending[:0], s.activeInOrder(c.gen)...)
		case ref := <-cmdCh:
			if s.claim(ref, c.gen) {
				pending = append(pending, ref.t)
			}
		case r := <-c.dataOut:
			if err := c.sendDataOut(r); err != nil {
				return err
			}
		case q := <-c.ctrl:
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
		case <-c.dead:
			return nil
		}
	}
}

// windowError describes a command window that stayed shut, or nil.
func (c *conn) windowError(limit time.Duration) error {
	since := c.blockedSince.Load()
	d := time.Duration(nanotime() - since)
	if since == 0 || d < limit {
		return nil
	}
	return fmt.Errorf("iscsi: command window closed for %v (target ExpCmdSN %d, MaxCmdSN %d)",
		d.Round(time.Millisecond), c.expCmdSN.Load(), c.maxCmdSN.Load())
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
	if t.read && len(t.buf) > 0 {
		flags |= 0x40
	} else if wlen > 0 {
		flags |= 0x20
	}
	h[1] = flags
	copy(h[8:16], s.lunBytes[:])
	h.setU32(16, t.itt)
	h.setU32(20, uint32(len(t.buf)))
	h.setU32(24, c.cmdSN)
	h.setU32(28, c.expStatSN.Load())
	copy(h[32:48], t.cdb.b[:])
	t.cmdSN = c.cmdSN
	c.cmdSN++
	t.sentAt.Store(nanotime())
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

// TMF functions (RFC 7143 §11.5.1).
const (
	tmfAbortTask    = 1
	tmfLogicalReset = 5
)

// ---- liveness ----

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

var errConnClosed = errors.New("iscsi: connection closed")
