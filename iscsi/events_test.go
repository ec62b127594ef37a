package iscsi

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// eventTarget is the hostile fake's login and SCSI answers (hconn) driven by a
// loop of its own, which records Logouts and lets a test send Async Messages and
// change the capacity.
type eventTarget struct {
	t *testing.T
	h *hostileTarget // its listener is unused; hconn needs its fault and digest

	l  net.Listener
	wg sync.WaitGroup

	mu         sync.Mutex
	logins     int
	logouts    int
	loginAt    []time.Time
	logoutAt   []time.Time
	cur        *eventConn
	blocks     uint64 // READ CAPACITY's answer (0: the fake's)
	uaOnce     bool   // the next READ gets UNIT ATTENTION 2A/09
	logoutWait uint16 // the Logout Response's Time2Wait
}

type eventConn struct {
	mu sync.Mutex // send is not safe for concurrent use
	c  *hconn
}

func startEventTarget(t *testing.T) *eventTarget {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &eventTarget{t: t, h: &hostileTarget{t: t}, l: l}
	serveConns(l, &e.wg, e.serve)
	t.Cleanup(func() { l.Close(); e.wg.Wait() })
	return e
}

// serveConns accepts connections on l until it closes, serving each on a goroutine
// of its own (counted in wg) and closing it afterwards.
func serveConns(l net.Listener, wg *sync.WaitGroup, serve func(net.Conn)) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				serve(nc)
			}()
		}
	}()
}

func (e *eventTarget) serve(nc net.Conn) {
	c := &hconn{h: e.h, nc: nc, buf: make([]byte, 1<<20), tsih: 7}
	c.r = pduReader{r: nc, maxData: len(c.buf)}
	if !c.login() {
		return
	}
	ec := &eventConn{c: c}
	e.mu.Lock()
	e.logins++
	e.loginAt = append(e.loginAt, time.Now())
	e.cur = ec
	e.mu.Unlock()
	for {
		req, data, ok := c.next()
		if !ok {
			return
		}
		ec.mu.Lock()
		ok = e.answer(c, &req, data)
		ec.mu.Unlock()
		if !ok {
			return
		}
	}
}

// next reads the initiator's next PDU (its data in c.buf).
func (c *hconn) next() (bhs, []byte, bool) {
	if err := c.r.readHeader(); err != nil {
		return bhs{}, nil, false
	}
	req := c.r.hdr
	n := req.dataLen()
	if err := c.r.readData(c.buf[:n]); err != nil {
		return bhs{}, nil, false
	}
	return req, c.buf[:n], true
}

// answer handles one initiator PDU; false ends the connection.
func (e *eventTarget) answer(c *hconn, req *bhs, data []byte) bool {
	var r bhs
	switch req.opcode() {
	case opSCSICmd:
		e.mu.Lock()
		blocks, ua := e.blocks, e.uaOnce && (req[32] == 0x28 || req[32] == 0x88)
		if ua {
			e.uaOnce = false
		}
		e.mu.Unlock()
		switch {
		case ua:
			c.expCmdSN = req.u32(24) + 1
			r.reset(opSCSIResp)
			r[1], r[3] = flagFinal, statusCheckCondition
			r.setU32(16, req.itt())
			return c.send(&r, capacitySense(), true)
		case blocks != 0 && req[32] == 0x9e:
			c.expCmdSN = req.u32(24) + 1
			d := make([]byte, 32)
			binary.BigEndian.PutUint64(d, blocks-1)
			binary.BigEndian.PutUint32(d[8:], hostileBlock)
			r.reset(opDataIn)
			r[1] = flagFinal | 0x01
			r.setU32(16, req.itt())
			r.setU32(20, reservedTag)
			return c.send(&r, d, true)
		}
		return c.scsi(req, data)
	case opNOPOut:
		if req.itt() == reservedTag {
			return true
		}
		r.reset(opNOPIn)
		r[1] = flagFinal
		r.setU32(16, req.itt())
		r.setU32(20, reservedTag)
		return c.send(&r, nil, true)
	case opLogoutReq:
		e.mu.Lock()
		e.logouts++
		e.logoutAt = append(e.logoutAt, time.Now())
		wait := e.logoutWait
		e.mu.Unlock()
		r.reset(opLogoutResp)
		r[1] = flagFinal
		r.setU32(16, req.itt())
		binary.BigEndian.PutUint16(r[40:], wait)
		c.send(&r, nil, true)
		return false
	}
	return false
}

// capacitySense is a response's sense data: UNIT ATTENTION, CAPACITY DATA HAS CHANGED.
func capacitySense() []byte {
	s := make([]byte, 2+18)
	binary.BigEndian.PutUint16(s, 18)
	s[2], s[4], s[9], s[14], s[15] = 0x70, senseUnitAttention, 10, 0x2a, 0x09
	return s
}

// async sends an Async Message on the current connection.
func (e *eventTarget) async(event byte, p2, p3 uint16, data []byte) {
	e.mu.Lock()
	ec := e.cur
	e.mu.Unlock()
	ec.mu.Lock()
	defer ec.mu.Unlock()
	var r bhs
	r.reset(opAsyncMsg)
	r[1] = flagFinal
	r.setU32(16, reservedTag)
	r[36] = event
	binary.BigEndian.PutUint16(r[40:], p2)
	binary.BigEndian.PutUint16(r[42:], p3)
	if !ec.c.send(&r, data, true) {
		e.t.Errorf("async message %d: send failed", event)
	}
}

func (e *eventTarget) counts() (logins, logouts int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.logins, e.logouts
}

func dialEvents(t *testing.T, e *eventTarget) (*Session, *syncLog) {
	t.Helper()
	var log syncLog
	s, err := Dial(context.Background(), Config{Portals: []string{e.l.Addr().String()}, TargetName: hostileIQN,
		InitiatorName: "iqn.2026-01.org.isboot.test:events", Logf: log.printf,
		Retry: RetryPolicy{InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, &log
}

type syncLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *syncLog) printf(f string, a ...any) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf(f, a...))
	l.mu.Unlock()
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("no %s in 10 s", what)
}

// Idle: the target sees a Logout; the session stays logged out (state idle) until
// the next command, which logs in again and succeeds.
func TestIdleLogsOutUntilTheNextCommand(t *testing.T) {
	e := startEventTarget(t)
	s, log := dialEvents(t, e)
	buf := make([]byte, 4096)
	if _, err := s.LUN().ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Idle(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "idle state", func() bool { return s.State() == "idle" })
	time.Sleep(100 * time.Millisecond) // no login comes by itself
	if logins, logouts := e.counts(); logins != 1 || logouts != 1 {
		t.Fatalf("after Idle: %d logins, %d logouts; want 1 and 1", logins, logouts)
	}
	if _, err := s.LUN().ReadAt(buf, 4096); err != nil {
		t.Fatalf("a read after Idle: %v", err)
	}
	if logins, _ := e.counts(); logins != 2 || s.State() != "serving" {
		t.Errorf("after a read: %d logins, state %s; want 2, serving\n%s", logins, s.State(), log)
	}
}

// Async event 1: the initiator logs out, waits the Logout Response's Time2Wait and
// logs in again; I/O meanwhile waits and succeeds.
func TestAsyncLogoutRequest(t *testing.T) {
	e := startEventTarget(t)
	e.logoutWait = 1
	s, log := dialEvents(t, e)
	e.async(1, 0, 5, nil)
	waitUntil(t, "Logout", func() bool { _, n := e.counts(); return n == 1 })
	buf := make([]byte, 4096)
	if _, err := s.LUN().ReadAt(buf, 0); err != nil {
		t.Fatalf("a read across the requested logout: %v", err)
	}
	e.mu.Lock()
	logins, gap := e.logins, time.Duration(0)
	if len(e.loginAt) == 2 {
		gap = e.loginAt[1].Sub(e.logoutAt[0])
	}
	e.mu.Unlock()
	if logins != 2 || gap < time.Second {
		t.Errorf("%d logins, the second %v after the Logout; want 2, at least Time2Wait (1 s)\n%s", logins, gap, log)
	}
}

// Async event 2: the target drops the connection and asks for Time2Wait 1 s before
// the next login, which the initiator honours.
func TestAsyncDropHonoursTime2Wait(t *testing.T) {
	e := startEventTarget(t)
	s, log := dialEvents(t, e)
	t0 := time.Now()
	e.async(2, 1, 20, nil)
	waitUntil(t, "second login", func() bool { n, _ := e.counts(); return n == 2 })
	if d := time.Since(t0); d < time.Second {
		t.Errorf("logged in again %v after the event, before Time2Wait (1 s)", d)
	}
	if _, err := s.LUN().ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "Time2Wait 1 s, Time2Retain 20 s") {
		t.Errorf("log:\n%s", log)
	}
}

// A capacity change, announced by an Async Message (event 0) or by a command's
// UNIT ATTENTION 2A/09, reaches CapacityChanged; Refresh reads the new size and the
// command is retried.
func TestCapacityChange(t *testing.T) {
	e := startEventTarget(t)
	s, _ := dialEvents(t, e)
	l := s.LUN()
	if l.Size() != hostileSize {
		t.Fatalf("size %d", l.Size())
	}
	e.mu.Lock()
	e.blocks = 2 * hostileSize / hostileBlock
	e.mu.Unlock()
	e.async(0, 0, 0, capacitySense())
	select {
	case <-s.CapacityChanged():
	case <-time.After(5 * time.Second):
		t.Fatal("no capacity change from the Async Message")
	}
	if n, err := l.Refresh(); err != nil || n != 2*hostileSize || l.Size() != n {
		t.Fatalf("Refresh = %d, %v; Size %d; want %d", n, err, l.Size(), 2*hostileSize)
	}
	e.mu.Lock()
	e.uaOnce = true
	e.mu.Unlock()
	if _, err := l.ReadAt(make([]byte, 512), hostileSize); err != nil {
		t.Fatalf("a read past the old end, answered UNIT ATTENTION first: %v", err)
	}
	select {
	case <-s.CapacityChanged():
	case <-time.After(5 * time.Second):
		t.Fatal("no capacity change from UNIT ATTENTION 2A/09")
	}
}
