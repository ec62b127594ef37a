package iscsi

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
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

// Session is a logged-in iSCSI session to one LUN. It is safe for concurrent use.
type Session struct {
	cfg      Config
	lunBytes LUNAddr
	tasks    []task // QueueDepth user slots, then one internal slot
	free     chan int
	cmdCh    chan taskRef

	mu       sync.Mutex
	active   []bool
	seq      uint64
	ittGen   uint32
	conn     *conn
	gen      uint64
	state    string
	tsih     uint16
	prevTSIH uint16
	portal   string
	portalIx int
	ident    identity
	haveID   bool
	failed   error
	closed   bool
	// idle: logged out on purpose (Idle); run waits for a command before it logs
	// in again. reconnectWait: the Time2Wait the target asked for before the next
	// login (a Logout Response, an Async Message).
	idle          bool
	reconnectWait time.Duration

	internalMu sync.Mutex
	tmfMu      sync.Mutex
	closing    chan struct{}
	failedCh   chan struct{} // closed when the session gives up
	runDone    chan struct{}
	lun        *LUN
	wake       chan struct{} // a command registered while idle
	capacity   chan struct{} // the target reported a capacity change

	progress    atomic.Bool   // a user command completed since the last connection loss
	targetPings atomic.Uint64 // NOP-In pings answered

	reconnects, commands, readBytes, writeBytes, errs atomic.Uint64
}

// Dial connects to the first portal that answers, logs in, checks the LUN and
// returns a session ready for I/O. Permanent login errors (IsPermanent: refused
// credentials, unknown target, a required digest refused, a malformed response)
// return as soon as every portal has given one, whatever cfg.Retry says; the others
// are retried under cfg.Retry until ctx ends.
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
		cfg:      c,
		lunBytes: c.LUNAddr, // withDefaults resolved it
		tasks:    make([]task, c.QueueDepth+1),
		free:     make(chan int, c.QueueDepth),
		cmdCh:    make(chan taskRef, 2*c.QueueDepth),
		active:   make([]bool, c.QueueDepth+1),
		state:    "logging-in",
		closing:  make(chan struct{}),
		failedCh: make(chan struct{}),
		runDone:  make(chan struct{}),
		wake:     make(chan struct{}, 1),
		capacity: make(chan struct{}, 1),
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

// State is one of logging-in, serving, reconnecting, idle (logged out by Idle until
// the next command), failed, closed.
func (s *Session) State() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
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

// Err is why the session ended for good (gave up reconnecting, or NoReconnect and
// its connection was lost), or nil while it lives; ErrClosed once closed.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed == nil && s.closed {
		return ErrClosed
	}
	return s.failed
}

// Failed is closed when the session gives up (Err is then set).
func (s *Session) Failed() <-chan struct{} { return s.failedCh }

// portalName is the portal of the current or last connection.
func (s *Session) portalName() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.portal
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
		{"lun", s.cfg.LUNAddr.String()},
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
