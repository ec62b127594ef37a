package rawsock

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/netpair"
	"golang.org/x/sys/unix"
)

// raw is c's rawsock reader.
func raw(t *testing.T, c *net.TCPConn) *Conn {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return New(c, rc)
}

// A stream larger than the socket buffers arrives whole and in order through Read,
// across waits for readiness, and the reader sees EOF after the writer closes.
func TestReadWholeAndEOF(t *testing.T) {
	a, b := netpair.TCP(t)
	rb := raw(t, b)
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	errc := make(chan error, 1)
	go func() {
		_, err := a.Write(want)
		a.CloseWrite()
		errc <- err
	}()
	got, err := io.ReadAll(rb)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("Write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d (or different content)", len(got), len(want))
	}
}

// A read deadline and a Close from another goroutine end a waiting Read as they
// would on the net.Conn.
func TestReadDeadlineAndClose(t *testing.T) {
	a, _ := netpair.TCP(t)
	r := raw(t, a)
	a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v, want ErrDeadlineExceeded", err)
	}
	a.SetReadDeadline(time.Time{})
	time.AfterFunc(50*time.Millisecond, func() { a.Close() })
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read on a closed connection: %v, want net.ErrClosed", err)
	}
}

// A Read does not allocate: the daemon calls it for every batch of responses.
func TestReadNoAllocs(t *testing.T) {
	a, b := netpair.TCP(t)
	rb := raw(t, b)
	msg, buf := []byte("0123456789"), make([]byte, 10)
	allocs := testing.AllocsPerRun(100, func() {
		a.Write(msg)
		io.ReadFull(rb, buf)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per read", allocs)
	}
}

// With Coalesce, a Read that finds the socket empty wakes when the bytes asked for
// are there, not at the first segment; when they do not come, it returns what did
// after maxWait, and the next wait takes any data at all.
func TestCoalesce(t *testing.T) {
	a, b := netpair.TCP(t)
	a.SetNoDelay(true)
	r := raw(t, b)
	want := 100
	r.Coalesce(func() int { return want }, 2*time.Second)
	go func() {
		// After the Read below has found the socket empty and gone to sleep.
		time.Sleep(50 * time.Millisecond)
		a.Write(make([]byte, 60))
		time.Sleep(100 * time.Millisecond)
		a.Write(make([]byte, 60))
	}()
	buf := make([]byte, 1000)
	n, err := r.Read(buf)
	if err != nil || n != 120 {
		t.Fatalf("coalesced Read = %d, %v; want both segments, 120 bytes", n, err)
	}

	want = 1000
	r.Coalesce(func() int { return want }, 100*time.Millisecond)
	go func() {
		time.Sleep(20 * time.Millisecond)
		a.Write(make([]byte, 10))
	}()
	start := time.Now()
	n, err = r.Read(buf)
	if err != nil || n != 10 {
		t.Fatalf("Read short of the mark = %d, %v; want the 10 bytes there", n, err)
	}
	if d := time.Since(start); d < 90*time.Millisecond {
		t.Fatalf("Read short of the mark returned after %v, before the wait bound", d)
	}
	// After a wait ran out, the next one wakes for any data.
	go func() {
		time.Sleep(50 * time.Millisecond)
		a.Write(make([]byte, 7))
	}()
	if n, err = r.Read(buf); err != nil || n != 7 {
		t.Fatalf("Read after a fall-back = %d, %v; want 7 bytes", n, err)
	}
	// The deadline Coalesce set does not outlive the wait.
	time.Sleep(150 * time.Millisecond)
	a.Write(make([]byte, 200))
	if n, err = r.Read(buf); err != nil || n != 200 {
		t.Fatalf("Read after the bound passed = %d, %v; want 200 bytes", n, err)
	}

	// Turned off, the mark is gone: a Read wakes for a single segment again.
	want = 100
	r.Coalesce(func() int { return want }, time.Second)
	go func() {
		time.Sleep(20 * time.Millisecond)
		a.Write(make([]byte, 150))
	}()
	if n, err = r.Read(buf); err != nil || n != 150 {
		t.Fatalf("Read = %d, %v; want 150 bytes", n, err)
	}
	r.Coalesce(nil, 0)
	go func() {
		time.Sleep(20 * time.Millisecond)
		a.Write(make([]byte, 5))
	}()
	b.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, err = r.Read(buf); err != nil || n != 5 {
		t.Fatalf("Read with coalescing off = %d, %v; want 5 bytes at once", n, err)
	}
}

// warm streams enough through a→r for the receive window to open wide (TCP starts
// at 64 KiB), and makes r's next large Read sample it again.
func warm(t *testing.T, a *net.TCPConn, r *Conn) {
	t.Helper()
	const total, chunk = 16 << 20, 32 << 10
	go a.Write(make([]byte, total))
	buf := make([]byte, chunk) // below segMin: plain reads
	for got := 0; got < total; {
		n, err := r.Read(buf)
		if err != nil {
			t.Fatalf("warm-up read: %v", err)
		}
		got += n
	}
	r.segLeft = 0
}

// writeSlowly writes n bytes in pieces, pausing between them, after the reader has
// had time to start waiting.
func writeSlowly(a *net.TCPConn, n, pieces int, pause time.Duration) {
	go func() {
		for i := 0; i < pieces; i++ {
			time.Sleep(pause)
			a.Write(make([]byte, n/pieces))
		}
	}()
}

// A Read for the rest of a large segment waits until all of it is queued and takes
// it in one system call, rather than a piece per wake-up as the sender's data
// arrives.
func TestSegmentReadWaitsForTheSegment(t *testing.T) {
	a, b := netpair.TCP(t)
	a.SetNoDelay(true)
	r := raw(t, b)
	r.Coalesce(func() int { return 1 }, 2*time.Second)
	warm(t, a, r)
	const seg = 128 << 10
	writeSlowly(a, seg, 4, 20*time.Millisecond)
	r.Promise(seg)
	n, err := r.Read(make([]byte, seg))
	if err != nil || n != seg {
		t.Fatalf("segment Read = %d, %v; want the whole %d-byte segment (window cap %d)", n, err, seg, r.segCap)
	}
	// A segment queued whole before the Read began is taken at once: it raises no
	// new readiness, so waiting for one would last the whole bound.
	a.Write(make([]byte, seg))
	time.Sleep(50 * time.Millisecond)
	r.Promise(seg)
	start := time.Now()
	if n, err = r.Read(make([]byte, seg)); err != nil || n != seg {
		t.Fatalf("Read of a queued segment = %d, %v; want %d", n, err, seg)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Read of a queued segment took %v: it waited for readiness that never came", d)
	}
}

// A segment already queued when its Read or WaitQueued begins is taken without a
// mark: setting one (and, before a splice, setting it back) would only cost system
// calls and a trip through the poller.
func TestQueuedSegmentSetsNoMark(t *testing.T) {
	a, b := netpair.TCP(t)
	r := raw(t, b)
	r.Coalesce(func() int { return 1 }, 2*time.Second)
	warm(t, a, r)
	const seg = 128 << 10
	for _, splice := range []bool{false, true} {
		r.Unmark()
		a.Write(make([]byte, seg))
		for deadline := time.Now().Add(5 * time.Second); queued(t, b) < seg; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the segment never arrived")
			}
		}
		if splice { // the same path; what is left must be what a splice needs
			if err := r.WaitQueued(seg); err != nil {
				t.Fatalf("WaitQueued: %v", err)
			}
			if r.lowat > 1 || r.armed || queued(t, b) != seg {
				t.Fatalf("WaitQueued of a queued segment left mark %d, bound %v, %d bytes queued", r.lowat, r.armed, queued(t, b))
			}
			io.ReadFull(r, make([]byte, seg))
			continue
		}
		r.Promise(seg)
		if n, err := r.Read(make([]byte, seg)); err != nil || n != seg {
			t.Fatalf("Read of a queued segment = %d, %v; want %d", n, err, seg)
		}
		if r.lowat > 1 || r.armed {
			t.Fatalf("Read of a queued segment set a mark of %d bytes (bound %v)", r.lowat, r.armed)
		}
	}
}

// Without a promise, a large Read takes what is there: a buffer's fill must not wait
// for bytes nobody said would come.
func TestLargeReadWithoutPromise(t *testing.T) {
	a, b := netpair.TCP(t)
	a.SetNoDelay(true)
	r := raw(t, b)
	r.Coalesce(func() int { return 1 }, 2*time.Second)
	warm(t, a, r)
	writeSlowly(a, 128<<10, 4, 20*time.Millisecond)
	n, err := r.Read(make([]byte, 128<<10))
	if err != nil || n != 32<<10 {
		t.Fatalf("Read without a promise = %d, %v; want the first 32768 bytes", n, err)
	}
	// A promise covers its own bytes, not what follows them.
	io.ReadFull(r, make([]byte, 96<<10))
	r.Promise(64 << 10)
	a.Write(make([]byte, 64<<10))
	if n, err = io.ReadFull(r, make([]byte, 64<<10)); err != nil {
		t.Fatalf("Read of the promised bytes = %d, %v", n, err)
	}
	writeSlowly(a, 64<<10, 2, 20*time.Millisecond)
	if n, err = r.Read(make([]byte, 128<<10)); err != nil || n != 32<<10 {
		t.Fatalf("Read after the promise = %d, %v; want the first 32768 bytes", n, err)
	}
}

// The segment mark never asks for more than half of what the receive window lets the
// sender have in flight: a fresh connection, whose window is 64 KiB, reads a large
// segment as it arrives.
func TestSegmentReadWithinTheWindow(t *testing.T) {
	a, b := netpair.TCP(t)
	a.SetNoDelay(true)
	r := raw(t, b)
	r.Coalesce(func() int { return 1 }, 2*time.Second)
	readsAsItArrives(t, a, r, "on a narrow window")
}

// readsAsItArrives sends a 128 KiB segment through a→r in four pieces and checks that
// a promised Read takes the first piece as it comes, not the segment once whole. It
// returns with the rest read.
func readsAsItArrives(t *testing.T, a *net.TCPConn, r *Conn, what string) {
	t.Helper()
	const seg = 128 << 10
	writeSlowly(a, seg, 4, 50*time.Millisecond)
	r.Promise(seg)
	start := time.Now()
	n, err := r.Read(make([]byte, seg))
	if err != nil || n != seg/4 {
		t.Fatalf("Read %s = %d, %v; want the first %d bytes (window cap %d)", what, n, err, seg/4, r.segCap)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Read %s took %v", what, d)
	}
	io.ReadFull(r, make([]byte, seg-n))
}

// A segment that stops arriving halfway is read as far as it came once the wait
// bound passes; the reader does not wait for the rest longer than that.
func TestSegmentReadFallsBack(t *testing.T) {
	a, b := netpair.TCP(t)
	a.SetNoDelay(true)
	r := raw(t, b)
	r.Coalesce(func() int { return 1 }, 100*time.Millisecond)
	warm(t, a, r)
	const seg = 128 << 10
	go func() {
		time.Sleep(20 * time.Millisecond)
		a.Write(make([]byte, seg/2))
	}()
	r.Promise(seg)
	start := time.Now()
	n, err := r.Read(make([]byte, seg))
	d := time.Since(start)
	if err != nil || n != seg/2 {
		t.Fatalf("Read of half a segment = %d, %v; want %d", n, err, seg/2)
	}
	if d < 90*time.Millisecond || d > time.Second {
		t.Fatalf("Read of half a segment returned after %v; want the 100ms bound", d)
	}
	// The deadline is gone: the rest may come much later.
	time.Sleep(200 * time.Millisecond)
	a.Write(make([]byte, seg/2))
	if n, err = io.ReadFull(r, make([]byte, seg/2)); err != nil {
		t.Fatalf("Read of the rest = %d, %v", n, err)
	}
	// After a wait that ran out, segment reads take what is there until the window
	// is sampled again.
	writeSlowly(a, seg, 4, 20*time.Millisecond)
	r.Promise(seg)
	if n, err = r.Read(make([]byte, seg)); err != nil || n != seg/4 {
		t.Fatalf("segment Read after a fall-back = %d, %v; want the first %d bytes", n, err, seg/4)
	}
	io.ReadFull(r, make([]byte, seg-seg/4))
}

// A segment's bound outlives its wait, so that the next segment need not set a
// deadline again; running out in a later wait, it only restarts that wait.
func TestSegmentBoundOutlivesItsWait(t *testing.T) {
	a, b := netpair.TCP(t)
	a.SetNoDelay(true)
	r := raw(t, b)
	r.Coalesce(func() int { return 1 }, 100*time.Millisecond)
	warm(t, a, r)
	const seg = 128 << 10
	writeSlowly(a, seg, 2, 10*time.Millisecond)
	r.Promise(seg)
	if n, err := r.Read(make([]byte, seg)); err != nil || n != seg {
		t.Fatalf("segment Read = %d, %v; want %d", n, err, seg)
	}
	first := r.dl
	if first.IsZero() {
		t.Fatal("no bound left after the segment's wait")
	}
	writeSlowly(a, seg, 2, 10*time.Millisecond)
	r.Promise(seg)
	if n, err := r.Read(make([]byte, seg)); err != nil || n != seg {
		t.Fatalf("second segment Read = %d, %v; want %d", n, err, seg)
	}
	if r.dl != first {
		t.Fatalf("the second segment set its own deadline although the first's had %v left", time.Until(first))
	}
	// The bound runs out while a Read waits for a few bytes that come later.
	go func() {
		time.Sleep(300 * time.Millisecond)
		a.Write(make([]byte, 10))
	}()
	if n, err := r.Read(make([]byte, 100)); err != nil || n != 10 {
		t.Fatalf("Read past a segment's stale bound = %d, %v; want 10 bytes", n, err)
	}
	if !r.dl.IsZero() {
		t.Fatal("the stale bound is still set")
	}
}

// Segment reads do not allocate either.
func TestSegmentReadNoAllocs(t *testing.T) {
	a, b := netpair.TCP(t)
	r := raw(t, b)
	r.Coalesce(func() int { return 1 }, time.Second)
	warm(t, a, r)
	msg, buf := make([]byte, 128<<10), make([]byte, 128<<10)
	allocs := testing.AllocsPerRun(50, func() {
		a.Write(msg)
		r.Promise(len(buf))
		io.ReadFull(r, buf)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per segment read", allocs)
	}
}

// queued is how many bytes wait in c's receive queue.
func queued(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, _ := c.SyscallConn()
	var n int
	var err error
	rc.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	if err != nil {
		t.Fatalf("SIOCINQ: %v", err)
	}
	return n
}

// rawWait waits on b as a splice does, directly on its descriptor, for 10 bytes a
// writes after longer than any bound the tests set.
func rawWait(t *testing.T, a, b *net.TCPConn) {
	t.Helper()
	rc, _ := b.SyscallConn()
	go func() {
		time.Sleep(300 * time.Millisecond)
		a.Write(make([]byte, 10))
	}()
	var got int
	err := rc.Read(func(fd uintptr) bool {
		n, err := unix.Read(int(fd), make([]byte, 100))
		got = n
		return err != unix.EAGAIN
	})
	if err != nil || got != 10 {
		t.Fatalf("a raw wait after WaitQueued = %d, %v; want 10 bytes", got, err)
	}
}

// WaitQueued, for a splice, returns once the segment is all queued, reading none of
// it; after a segment that stops halfway it returns at the bound. Either way the mark
// is back to one byte: the splice's own waits wake for any data.
func TestWaitQueued(t *testing.T) {
	a, b := netpair.TCP(t)
	a.SetNoDelay(true)
	r := raw(t, b)
	r.Coalesce(func() int { return 1 }, 200*time.Millisecond)
	warm(t, a, r)
	const seg = 128 << 10
	writeSlowly(a, seg, 4, 20*time.Millisecond)
	if err := r.WaitQueued(seg); err != nil {
		t.Fatalf("WaitQueued: %v", err)
	}
	if n := queued(t, b); n != seg {
		t.Fatalf("after WaitQueued %d bytes are queued, want the whole %d-byte segment", n, seg)
	}
	if r.lowat > 1 {
		t.Fatalf("WaitQueued left a mark of %d bytes", r.lowat)
	}
	io.ReadFull(r, make([]byte, seg))
	// Nor a deadline: a splice waits on the socket directly, past any bound.
	rawWait(t, a, b)
	// Not even the bound a promised Read left behind, when WaitQueued need not wait.
	writeSlowly(a, seg, 2, 10*time.Millisecond)
	r.Promise(seg)
	if n, err := r.Read(make([]byte, seg)); err != nil || n != seg {
		t.Fatalf("segment Read = %d, %v; want %d", n, err, seg)
	}
	if err := r.WaitQueued(100); err != nil {
		t.Fatalf("WaitQueued(100): %v", err)
	}
	rawWait(t, a, b)

	go func() {
		time.Sleep(20 * time.Millisecond)
		a.Write(make([]byte, seg/2))
	}()
	start := time.Now()
	if err := r.WaitQueued(seg); err != nil {
		t.Fatalf("WaitQueued for half a segment: %v", err)
	}
	if d := time.Since(start); d < 190*time.Millisecond || d > 2*time.Second {
		t.Fatalf("WaitQueued for half a segment returned after %v; want the 200ms bound", d)
	}
	if n := queued(t, b); n != seg/2 {
		t.Fatalf("after the bound %d bytes are queued, want %d", n, seg/2)
	}
	// The bound is gone with the wait, and the mark with it.
	io.ReadFull(r, make([]byte, seg/2))
	go func() {
		time.Sleep(300 * time.Millisecond)
		a.Write(make([]byte, 10))
	}()
	if n, err := r.Read(make([]byte, 100)); err != nil || n != 10 {
		t.Fatalf("Read after WaitQueued = %d, %v; want 10 bytes", n, err)
	}
}

// Without window scaling (QEMU's user network offers none) the window we offer never
// passes 64 KiB, even where rcv_ssthresh has grown past it, as it does once a large
// SO_RCVLOWAT has raised the window clamp. A large segment is then read as it
// arrives: a mark above the window stalled the sender until the wait's bound.
func TestSegmentReadWithoutWindowScaling(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the connection runs in a network namespace with net.ipv4.tcp_window_scaling=0")
	}
	// This goroutine's thread enters the namespace and is never unlocked: it ends
	// with the test, so no other goroutine runs in the namespace.
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Fatalf("unshare: %v", err)
	}
	lo, err := unix.NewIfreq("lo")
	if err != nil {
		t.Fatal(err)
	}
	lo.SetUint16(unix.IFF_UP | unix.IFF_LOOPBACK | unix.IFF_RUNNING)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, lo); err != nil {
		t.Fatalf("lo up: %v", err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/tcp_window_scaling", []byte("0"), 0); err != nil {
		t.Fatalf("tcp_window_scaling: %v", err)
	}

	a, b := netpair.TCP(t)
	a.SetNoDelay(true)
	r := raw(t, b)
	info := tcpInfo(t, b)
	if info.Options&tcpiOptWscale != 0 {
		t.Fatalf("window scaling negotiated (tcp_info options %#x): the namespace's sysctl did not apply", info.Options)
	}
	// A large mark on the fresh connection raises its window clamp, as the segment
	// marks of the first reads do in a guest.
	rc, _ := b.SyscallConn()
	rc.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1<<20)
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1)
	})
	r.Coalesce(func() int { return 1 }, 2*time.Second)
	warm(t, a, r)
	if ss := tcpInfo(t, b).Rcv_ssthresh; ss <= maxUnscaledWindow {
		t.Fatalf("rcv_ssthresh %d after the warm-up: the case under test (above 64 KiB) did not arise", ss)
	}
	readsAsItArrives(t, a, r, "without window scaling")
	// The options do not change after the handshake: one sample settles it.
	buf := make([]byte, segMin)
	for i := 0; i < 3*segSample; i++ {
		r.Promise(segMin)
		if _, err := a.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(r, buf); err != nil {
			t.Fatal(err)
		}
	}
	if r.samples != 1 {
		t.Fatalf("the window was sampled %d times on a connection without window scaling, want once", r.samples)
	}
}

func tcpInfo(t *testing.T, c *net.TCPConn) *unix.TCPInfo {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	rc.Control(func(fd uintptr) { info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if err != nil {
		t.Fatalf("TCP_INFO: %v", err)
	}
	return info
}
