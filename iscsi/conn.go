package iscsi

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/isboot/isboot/iscsi/rawsock"
	"github.com/isboot/isboot/iscsi/sockio"
)

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

	// wmu guards the write side (wr, hdr, cmdSN, direct). The writer goroutine holds
	// it while it works; callers take it to send their own commands (sendDirect).
	wmu      sync.Mutex
	direct   bool         // callers may send directly: released, nothing queued in the writer
	senders  atomic.Int32 // callers in sendDirect; the last one out flushes
	cmdSN    uint32
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
	flushKick  chan struct{} // sendDirect queued commands for the writer to flush
	release    chan struct{}
	tmfResp    chan byte
	logoutResp chan byte
	// logoutWait: the Logout Response's Time2Wait and Time2Retain, in seconds,
	// stored before its response code goes to logoutResp.
	logoutWait, logoutRetain atomic.Uint32
	// draining: a Logout is coming; the writer sends no new command (Idle,
	// logoutAsked). logoutAsked: the target asked for a Logout within this long
	// (Async Message event 1); run does it.
	draining    atomic.Bool
	logoutAsked chan time.Duration

	// sock reads the PDU stream from nc by raw system call, coalescing wake-ups (nil
	// for a net.Pipe). A reader that waits for nc some other way must turn it off
	// (Coalesce(nil, 0)) or wait no longer than coalesceWait.
	sock *rawsock.Conn
	// inflight counts the responses due, for the reader's coalescing.
	inflight inflightAcct

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
		maxSend:     num("TargetMaxRecvDataSegmentLength"),
		firstBurst:  num("FirstBurstLength"),
		maxBurst:    num("MaxBurstLength"),
		immediate:   p["ImmediateData"] == "Yes",
		initialR2T:  p["InitialR2T"] == "Yes",
		cmdSN:       res.expCmdSN,
		dataOut:     make(chan r2tReq, s.cfg.QueueDepth*16+16),
		ctrl:        make(chan ctrlReq, s.cfg.QueueDepth+16),
		windowOpen:  make(chan struct{}, 1),
		flushKick:   make(chan struct{}, 1),
		release:     make(chan struct{}),
		tmfResp:     make(chan byte, 1),
		logoutResp:  make(chan byte, 1),
		logoutAsked: make(chan time.Duration, 1),
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
	c.inflight.bySlot = make([]atomic.Int64, len(s.tasks))
	sock := sockio.New(nc)
	head := &headReader{r: nc}
	c.wr = pduWriter{w: nc}
	if sock != nil {
		head.r, c.wr.w, c.wr.wv = sock, sock, sock
		// The PDU stream's reads coalesce their wake-ups (coalesce.go); sockio reads
		// and splices large segments, without a mark of its own.
		rs := rawsock.New(nc, sock.RawConn())
		rs.Coalesce(c.inflight.lowat, coalesceWait)
		head.r, c.sock = rs, rs
	}
	br := bufio.NewReaderSize(head, 64<<10)
	c.rd = pduReader{r: br, br: br, head: head, sock: sock, maxData: s.cfg.MaxRecvDataSegmentLength,
		hdrDigest: p["HeaderDigest"] == "CRC32C", dataDigest: p["DataDigest"] == "CRC32C"}
	c.wr.hdrDigest, c.wr.dataDigest = c.rd.hdrDigest, c.rd.dataDigest
	if c.sock != nil {
		c.rd.unmark, c.rd.promise, c.rd.waitQueued = c.sock.Unmark, c.sock.Promise, c.sock.WaitQueued
	}
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

var errConnClosed = errors.New("iscsi: connection closed")

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

func (c *conn) statusSeen(h *bhs) {
	c.expStatSN.Store(h.statSN() + 1)
}
