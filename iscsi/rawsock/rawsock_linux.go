// Package rawsock reads a non-blocking socket with raw system calls, waiting for
// readiness through the Go runtime's poller as net.Conn does, and can coalesce the
// reader's wake-ups (Coalesce). Writes and the rest of the data path's raw I/O are
// iscsi/sockio's.
//
// A net.Conn enters every read and write through the scheduler's system-call path,
// and the first such call after the process went idle wakes sysmon, the runtime's
// monitor thread. A daemon that serves an I/O every few tens of microseconds on one P
// goes idle between most of them, so each one paid a futex wake-up and a run of
// 20 µs sysmon ticks: a third of the iSCSI initiator's CPU at 4 KiB QD 32. A call on
// a non-blocking socket cannot block, so the P need not be handed off during it.
//
// Deadlines, Close from another goroutine and the poller's wake-ups work as for
// the net.Conn the Conn wraps.
package rawsock

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn reads a socket's descriptor directly. One goroutine may read at a time: the
// call state lives in the Conn and the callback is bound once, so a call does not
// allocate.
type Conn struct {
	nc net.Conn
	rc syscall.RawConn

	rbuf   []byte
	rn     int
	rerrno syscall.Errno
	readFn func(uintptr) bool

	// Read coalescing (Coalesce): the low-water mark set on the socket, whether a
	// read deadline bounds the current wait, and whether the last wait ran into it.
	want     func() int
	maxWait  time.Duration
	lowat    int
	fellBack bool
	// The read deadline: dl as set on the connection (zero: none); armed while the
	// current wait is bounded by it; lazy when it is a segment's bound, which may
	// outlive its wait (bound).
	dl    time.Time
	armed bool
	lazy  bool
	// Segment reads (Promise): the bytes promised still to come, the mark to wait
	// for before the next read, and segRead bound once.
	promised int
	segMark  int
	segFn    func(uintptr) bool
	waitFn   func(uintptr) bool
	segCap   int  // the largest segment mark the receive window allows now
	segLeft  int  // segment reads until segCap is sampled again
	unscaled bool // the connection has no window scaling: no segment marks at all
	samples  int  // windows sampled, for tests
	info     unix.TCPInfo
}

// New reads nc through rc, nc's raw side (sockio.Conn.RawConn).
func New(nc net.Conn, rc syscall.RawConn) *Conn {
	s := &Conn{nc: nc, rc: rc}
	s.readFn = s.read
	s.segFn, s.waitFn = s.segRead, s.waitSegment
	return s
}

// Coalesce makes a Read that finds the socket empty sleep until want() bytes are
// queued (SO_RCVLOWAT), or maxWait has passed, rather than wake for every segment.
// The reader calls want before each wait; it must not count bytes that might never
// come, or the wait lasts maxWait. A Read returns what is there, however little,
// once it wakes. Coalesce uses the connection's read deadline: the caller must not
// set one. The mark stays on the socket between reads, so anything else that waits
// for it to become readable (a splice) must wait through Read, or turn coalescing off
// first: Coalesce(nil, 0) resets the mark to one byte.
func (s *Conn) Coalesce(want func() int, maxWait time.Duration) {
	s.want, s.maxWait = want, maxWait
	if want == nil {
		s.rc.Control(func(fd uintptr) { s.setMark(fd, 1) })
	}
}

// Unmark puts the mark back to one byte, coalescing staying on: for a reader about to
// wait on the socket another way (a splice), which must wake for the bytes it is
// sure to get, not for what the mark still asks. The next Read sets it again.
func (s *Conn) Unmark() {
	s.rc.Control(func(fd uintptr) { s.setMark(fd, 1) })
}

// maxLowat bounds the low-water mark: far below the receive buffer, where the kernel
// would have to grow it.
const maxLowat = 64 << 10

// Read reads what the socket holds, waiting for it when it holds nothing.
func (s *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rbuf, s.rn, s.rerrno = p, 0, 0
	fn := s.readFn
	if s.promised >= segMin && len(p) >= segMin {
		if m := s.segmentMark(min(len(p), s.promised)); m > 0 {
			s.segMark = m
			fn = s.segFn
		}
	}
	err := s.rc.Read(fn)
	for {
		timedOut := errors.Is(err, os.ErrDeadlineExceeded) && !s.dl.IsZero()
		if s.armed {
			s.armed = false
			if timedOut {
				// Fewer bytes came than expected: take what is there, and wait
				// for any data at all until some arrives.
				s.fellBack = true
				s.segmentTimedOut()
			}
			if timedOut || !s.lazy {
				s.unbound()
			}
		} else if timedOut {
			s.unbound() // a segment's bound that outlived its wait: not this one's
		}
		if !timedOut {
			break
		}
		err = s.rc.Read(s.readFn)
	}
	s.rbuf = nil
	if s.rn > 0 {
		s.fellBack = false
		s.promised = max(s.promised-s.rn, 0)
	}
	switch {
	case err != nil:
		return 0, err
	case s.rerrno != 0:
		return 0, s.opErr("read", s.rerrno)
	case s.rn == 0:
		return 0, io.EOF
	}
	return s.rn, nil
}

func (s *Conn) read(fd uintptr) bool {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&s.rbuf[0])), uintptr(len(s.rbuf)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			if s.want != nil {
				s.beforeWait(fd)
			}
			return false // wait until readable
		}
		s.rn, s.rerrno = int(r), e
		return true
	}
}

// Promise says that the next n bytes of the stream are one segment the peer is
// sending now, such as a Data-In's data. A Read for a large part of them (segMin or
// more) that finds them not yet queued waits until they are, rather than waking for
// each piece as it arrives and chasing the sender with a system call per piece:
// tgtd's 256 KiB segments came in four to six reads, and the calls were most of the
// CPU the initiator spent per MiB beyond libiscsi's. The wait asks for no more than
// half of what the receive window lets the peer send (a narrow window would stall
// the sender before the bytes were all there), and lasts at most segWait or the
// Coalesce bound, the longer; after a wait that ran out, segment reads take what is
// there until the window is sampled again.
// Only with coalescing on.
func (s *Conn) Promise(n int) { s.promised = n }

const (
	// segMin is the least a segment read waits for: below it, a wake-up per piece
	// costs little.
	segMin = 64 << 10
	// segMax bounds the mark, as the receive buffer needs twice the mark.
	segMax = 256 << 10
	// segWait bounds a segment's wait (or the Coalesce bound, if longer). The bytes
	// were promised, so it only guards against a window narrower than sampled; a
	// 256 KiB segment takes 4 ms to cross QEMU's user network at 60 MiB/s.
	segWait = 20 * time.Millisecond
	// segSample is how many segment reads go by between samples of the window.
	segSample = 16
)

// sampleWindow sets segCap from the receive window the kernel lets grow now (TCP's
// rcv_ssthresh bounds the window it advertises, and 64 KiB does without window
// scaling), every segSample segment reads.
func (s *Conn) sampleWindow() {
	s.segLeft = segSample
	s.samples++
	s.rc.Control(func(fd uintptr) {
		n := uint32(unsafe.Sizeof(s.info))
		_, _, e := syscall.RawSyscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&s.info)), uintptr(unsafe.Pointer(&n)), 0)
		if e != 0 || n < uint32(unsafe.Offsetof(s.info.Rcv_ssthresh)+4) {
			s.segCap = 0 // not TCP: wake for every segment
			return
		}
		window := int(s.info.Rcv_ssthresh)
		if s.info.Options&tcpiOptWscale == 0 {
			// The peer took no window scaling (QEMU's user network does not): the
			// window we offer never passes 64 KiB, however far rcv_ssthresh grows.
			// A mark above it stalled the sender until the wait's bound ran out:
			// in the TCG guest 30-100 waits of 10-20 ms per 256 MiB read, each with
			// a whole window or two (64,800 or 129,552 bytes) queued and no more
			// coming, and sequential reads 15 % slower on a loaded host.
			window = min(window, maxUnscaledWindow)
			// Options are settled in the handshake: the window stays this narrow,
			// so a segment never gets a mark here and the window is not sampled
			// again (TCP_INFO took 4 % of the serving process's CPU in a sequential
			// read in the TCG guest).
			s.unscaled = true
		}
		s.segCap = min(window/2, segMax)
	})
}

const (
	// tcpiOptWscale is TCPI_OPT_WSCALE in tcp_info's options: window scaling is on.
	tcpiOptWscale = 4
	// maxUnscaledWindow is the largest window TCP can offer without scaling.
	maxUnscaledWindow = 65535
)

// WaitQueued waits until the next n bytes, one segment on its way, are queued on the
// socket, without reading them: for a reader about to splice them, which then takes
// them in one call. It waits as a promised Read does (within half the receive window,
// for at most its bound) and leaves the mark at one byte, so the splice's own
// waits wake for any data. Only with coalescing on; otherwise, and for fewer than
// segMin bytes, it only resets the mark, as Unmark does.
func (s *Conn) WaitQueued(n int) error {
	m := s.segmentMark(n)
	if m == 0 {
		s.unbound() // a segment's bound left by a Read: the splice takes none
		s.Unmark()
		return nil
	}
	s.segMark = m
	err := s.rc.Read(s.waitFn)
	s.fellBack = false
	if s.armed {
		s.armed = false
		if errors.Is(err, os.ErrDeadlineExceeded) {
			s.segmentTimedOut()
			s.fellBack, err = true, nil // the splice takes what came
		}
	}
	s.unbound() // the splice's own waits take no deadline
	s.Unmark()
	return err
}

// segmentMark is the mark for a wait for the next n bytes of a segment: n within
// segCap, or 0 for no wait.
func (s *Conn) segmentMark(n int) int {
	if s.want == nil || n < segMin || s.unscaled {
		return 0
	}
	if s.segLeft <= 0 {
		s.sampleWindow()
	}
	s.segLeft--
	if m := min(n, s.segCap); m >= segMin {
		return m
	}
	return 0
}

// armSegment sets the segment mark, even when it is there already: setting it makes
// the kernel look again whether the bytes are queued, and say so, where a segment
// that arrived before this wait began would raise no new readiness. It bounds the
// wait, and reports false if the socket refused the mark.
func (s *Conn) armSegment(fd uintptr) bool {
	m := s.segMark
	s.segMark = 0
	old := s.lowat
	s.lowat = -1 // force the setsockopt
	if !s.setMark(fd, m) {
		s.lowat = old
		return false
	}
	if !s.armed {
		s.bound(max(s.maxWait, segWait), true)
	}
	return true
}

// segRead waits for the segment mark before its first read.
func (s *Conn) segRead(fd uintptr) bool {
	if s.segMark > 0 && !s.segQueued(fd) && s.armSegment(fd) {
		return false
	}
	return s.read(fd)
}

// waitSegment waits for the segment mark and reads nothing.
func (s *Conn) waitSegment(fd uintptr) bool {
	return !(s.segMark > 0 && !s.segQueued(fd) && s.armSegment(fd))
}

// segQueued reports whether the segment's bytes are queued already (SIOCINQ), and
// then drops the mark: a segment that came in while its header was read needs no
// wait, and setting the mark for it (and, before a splice, setting it back) would be
// two system calls and a trip through the poller for nothing.
func (s *Conn) segQueued(fd uintptr) bool {
	var n int32
	_, _, e := syscall.RawSyscall(syscall.SYS_IOCTL, fd, unix.SIOCINQ, uintptr(unsafe.Pointer(&n)))
	if e != 0 || int(n) < s.segMark {
		return false
	}
	s.segMark = 0
	return true
}

// setMark puts the low-water mark at n bytes, unless it is there already. It reports
// false when the socket refused it.
func (s *Conn) setMark(fd uintptr, n int) bool {
	if n == s.lowat || n == 1 && s.lowat == 0 {
		return true
	}
	v := int32(n)
	_, _, e := syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, fd, syscall.SOL_SOCKET, syscall.SO_RCVLOWAT,
		uintptr(unsafe.Pointer(&v)), 4, 0)
	if e != 0 {
		return false
	}
	s.lowat = n
	return true
}

// beforeWait sets the low-water mark for the wait to come and bounds the wait.
func (s *Conn) beforeWait(fd uintptr) {
	w := 1
	if !s.fellBack {
		w = min(max(s.want(), 1), maxLowat)
	}
	if !s.setMark(fd, w) {
		s.want, w = nil, 1 // not a TCP socket after all: wake for every segment
	}
	if w > 1 && !s.armed {
		s.bound(s.maxWait, false)
	}
}

// bound ends the current wait within d. A segment's bound (lazy) is left set after
// its wait, and the next segment's wait keeps it while at least half of d is left:
// each change of a deadline is a change of a runtime timer, which in the TCG guest
// cost as much as the segment's read. A stale bound that runs out in some later wait
// only makes that wait start over (Read).
func (s *Conn) bound(d time.Duration, lazy bool) {
	s.armed = true
	now := time.Now()
	if lazy && s.lazy && s.dl.Sub(now) >= d/2 {
		return
	}
	s.dl, s.lazy = now.Add(d), lazy
	s.nc.SetReadDeadline(s.dl)
}

// unbound clears the read deadline.
func (s *Conn) unbound() {
	if !s.dl.IsZero() {
		s.dl, s.lazy = time.Time{}, false
		s.nc.SetReadDeadline(time.Time{})
	}
}

// segmentTimedOut turns segment waits off for a while after a bounded wait of the
// current kind ran out while waiting for a segment: the window may be narrower than
// sampled, or the link slow. Reads then take what is there until segCap is sampled
// again.
func (s *Conn) segmentTimedOut() {
	if s.lazy {
		s.segCap, s.segLeft = 0, segSample
	}
}

func (s *Conn) opErr(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: s.nc.LocalAddr().Network(), Source: s.nc.LocalAddr(), Addr: s.nc.RemoteAddr(), Err: errno}
}
