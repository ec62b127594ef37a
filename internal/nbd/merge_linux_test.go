package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/isboot/isboot/iscsi/pipebuf"
	"golang.org/x/sys/unix"
)

// TestAdjacentReadsMergedThroughISCSI serves a tgtd LUN full of random bytes over TCP
// and sends runs of adjacent reads in one write, as nbdcopy does, with reads that do
// not continue the one before in between, with simple and with structured replies.
// Each reply must carry its own request's bytes, and the runs must have gone to the
// target merged (MergedReads). nbdcopy at its default request size (256 KiB) must
// copy the LUN intact.
func TestAdjacentReadsMergedThroughISCSI(t *testing.T) {
	testenv.Require(t, "integration test", "tgtd", "nbdcopy")
	d, lun, data := randomLUN(t, 32<<20, "merged", 91)
	srv := NewServer(lun, Options{ExportName: d.IQN, Logf: t.Logf})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	go srv.Serve(ctx, l)

	type extent struct{ off, n uint64 }
	var extents []extent
	var batch []byte
	for run := range uint64(6) {
		off := run * 5 << 20
		for i := range uint64(12) { // 12 x 64-192 KiB, each continuing the last
			n := (64 + 64*(i%3)) << 10
			extents = append(extents, extent{off, n})
			off += n
		}
		extents = append(extents, extent{off + 4096, 64 << 10}) // a gap
	}
	for i, e := range extents {
		batch = append(batch, encodeRequest(cmdRead, 0, uint64(i), e.off, uint32(e.n), nil)...)
	}
	for _, structured := range []bool{false, true} {
		before := srv.Stats()
		var tc *testClient
		if structured {
			tc = dialStructuredNet(t, "tcp", l.Addr().String(), false)
		} else {
			tc = dialTest(t, "tcp", l.Addr().String(), d.IQN)
		}
		if _, err := tc.c.Write(batch); err != nil {
			t.Fatal(err)
		}
		seen := map[uint64]bool{}
		for range extents {
			var cookie uint64
			var b []byte
			if structured {
				chunks, err := tc.structuredReply()
				if err != nil || len(chunks) != 1 || chunks[0].typ != replyOffsetData || len(chunks[0].payload) < 8 {
					t.Fatalf("structured reply: %v, %+v", err, chunks)
				}
				cookie, b = chunks[0].cookie, chunks[0].payload[8:]
				if cookie < uint64(len(extents)) && binary.BigEndian.Uint64(chunks[0].payload) != extents[cookie].off {
					t.Fatalf("read %d: chunk at offset %d, want %d", cookie, binary.BigEndian.Uint64(chunks[0].payload), extents[cookie].off)
				}
			} else {
				var errno uint32
				var err error
				cookie, errno, b, err = tc.recv(func(c uint64) int { return int(extents[c].n) })
				if err != nil || errno != 0 {
					t.Fatalf("reply %d: errno %d, %v", cookie, errno, err)
				}
			}
			if cookie >= uint64(len(extents)) || seen[cookie] {
				t.Fatalf("reply for cookie %d, unknown or answered twice", cookie)
			}
			seen[cookie] = true
			e := extents[cookie]
			if !bytes.Equal(b, data[e.off:e.off+e.n]) {
				t.Fatalf("read %d (%d bytes at %d) returned other bytes", cookie, e.n, e.off)
			}
		}
		st := srv.Stats()
		merged := st.MergedReads - before.MergedReads
		if merged == 0 || st.Commands-before.Commands != uint64(len(extents)) || st.Errors != 0 {
			t.Errorf("structured %v, after %d reads in runs of 12: %+v, want some merged, every read counted, no errors", structured, len(extents), st)
		}
		t.Logf("structured %v: %d reads, %d merged into the read before", structured, len(extents), merged)
	}

	// nbdcopy's requests merge only while the server is behind (its requests then
	// wait in the buffer), which a short copy on an idle machine may never be: what
	// is checked here is the copy.
	before := srv.Stats()
	out := filepath.Join(t.TempDir(), "copy")
	run(t, "nbdcopy", "nbd://"+l.Addr().String(), out)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Fatal("nbdcopy: the copy differs from what was written")
	}
	st := srv.Stats()
	t.Logf("nbdcopy: %d reads, %d merged", st.Commands-before.Commands, st.MergedReads-before.MergedReads)
}

// pipeMem is a memory device with the pipe path of an iSCSI LUN: it refuses piped
// reads above maxPipe, as a LUN refuses those above its largest transfer, and every
// read that covers bad fails as a medium error would.
type pipeMem struct {
	*blockdev.Mem
	maxPipe int
	bad     int64

	mu     sync.Mutex
	pipeNs []int // the size of every piped read taken
}

func (d *pipeMem) covers(n int, off int64) bool { return off <= d.bad && d.bad < off+int64(n) }

func (d *pipeMem) ReadAt(p []byte, off int64) (int, error) {
	if d.covers(len(p), off) {
		return 0, errMedium
	}
	return d.Mem.ReadAt(p, off)
}

func (d *pipeMem) ReadAtAsync(p []byte, off int64, done func(int, error)) {
	go func() { done(d.ReadAt(p, off)) }()
}

func (d *pipeMem) WriteAtAsync(p []byte, off int64, fua bool, done func(int, error)) {
	go func() { done(d.WriteAt(p, off)) }()
}

func (d *pipeMem) ReadAtPipe(p *pipebuf.Pipe, n int, off int64, done func(int, error)) bool {
	if n > d.maxPipe {
		return false
	}
	d.mu.Lock()
	d.pipeNs = append(d.pipeNs, n)
	d.mu.Unlock()
	go func() {
		b := make([]byte, n)
		if _, err := d.ReadAt(b, off); err != nil {
			done(0, err)
			return
		}
		if err := p.Write(b); err != nil {
			done(0, err)
			return
		}
		done(n, nil)
	}()
	return true
}

// TestMergedReadFallbacks sends runs of adjacent 64 KiB reads to a device that
// refuses piped reads above 256 KiB and has a bad block: the merges the device
// refuses are retried smaller, and a merged read that fails is answered read by read,
// so only the read that covers the bad block fails, and every other one returns its
// bytes.
func TestMergedReadFallbacks(t *testing.T) {
	const size = 4 << 20
	dev := &pipeMem{Mem: blockdev.NewMem(size, 512, false), maxPipe: 256 << 10, bad: 2<<20 + 5*(64<<10) + 512}
	data := randBytes(size, 5)
	dev.Mem.WriteAt(data, 0)
	var mu sync.Mutex
	var logs []string
	logf := func(f string, a ...any) { mu.Lock(); logs = append(logs, f); mu.Unlock() }
	srv := NewServer(dev, Options{Logf: logf})
	tc := serveTCP(t, srv)

	const n = 64 << 10
	var batch []byte
	var offs []uint64
	// The first two runs find the largest merge the device takes (1 MiB and 512 KiB
	// are refused); the third covers the bad block.
	for _, base := range []uint64{0, 1 << 20, 2 << 20} {
		for i := range uint64(16) {
			offs = append(offs, base+i*n)
			batch = append(batch, encodeRequest(cmdRead, 0, uint64(len(offs)-1), base+i*n, n, nil)...)
		}
	}
	if _, err := tc.c.Write(batch); err != nil {
		t.Fatal(err)
	}
	badCookie := uint64(32 + 5)
	for range offs {
		cookie, errno, b, err := tc.recv(func(uint64) int { return n })
		if err != nil || cookie >= uint64(len(offs)) {
			t.Fatalf("reply %d: %v", cookie, err)
		}
		switch {
		case cookie == badCookie && errno != errIO:
			t.Errorf("the read over the bad block: errno %d, want EIO", errno)
		case cookie != badCookie && errno != 0:
			t.Errorf("read %d (at %d): errno %d, want success", cookie, offs[cookie], errno)
		case cookie != badCookie && !bytes.Equal(b, data[offs[cookie]:offs[cookie]+n]):
			t.Errorf("read %d (at %d) returned other bytes", cookie, offs[cookie])
		}
	}
	st := srv.Stats()
	if st.Commands != uint64(len(offs)) || st.Errors != 1 || st.MergedReads == 0 {
		t.Errorf("stats %+v: want %d commands, 1 error, some merged", st, len(offs))
	}
	dev.mu.Lock()
	t.Logf("piped reads: %v; %+v", dev.pipeNs, st)
	if !slices.Contains(dev.pipeNs, dev.maxPipe) {
		t.Errorf("piped reads %v: none as large as the device takes (%d), after it refused larger ones", dev.pipeNs, dev.maxPipe)
	}
	dev.mu.Unlock()
	mu.Lock()
	defer mu.Unlock()
	if len(logs) != 1 || !strings.Contains(logs[0], "nbd: %s at %d+%d") {
		t.Errorf("logged %q, want the one failed read", logs)
	}
}

// serveTCP serves srv on a loopback port until the test ends and returns a client
// past the handshake.
func serveTCP(t *testing.T, srv *Server) *testClient {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go srv.Serve(ctx, l)
	return dialTest(t, "tcp", l.Addr().String(), "")
}

// newHeldPipeMem returns an 8 MiB heldPipeMem holding from 4 MiB on, filled with
// random bytes from seed, and those bytes.
func newHeldPipeMem(seed uint64) (*heldPipeMem, []byte) {
	const size = 8 << 20
	dev := &heldPipeMem{pipeMem: &pipeMem{Mem: blockdev.NewMem(size, 512, false), maxPipe: 1 << 20, bad: -1},
		holdFrom: 4 << 20, gate: make(chan struct{}), started: make(chan struct{}, 8)}
	data := randBytes(size, seed)
	dev.Mem.WriteAt(data, 0)
	return dev, data
}

// heldPipeMem is a pipeMem whose small (unpiped) reads from holdFrom on wait until
// gate closes, so a test can keep requests in flight without the reader looking for
// their followers; started counts them as they reach the device.
type heldPipeMem struct {
	*pipeMem
	holdFrom int64
	gate     chan struct{}
	started  chan struct{}
}

func (d *heldPipeMem) ReadAtAsync(p []byte, off int64, done func(int, error)) {
	if off < d.holdFrom {
		d.pipeMem.ReadAtAsync(p, off, done)
		return
	}
	d.started <- struct{}{}
	d.pipeMem.ReadAtAsync(p, off, func(n int, err error) {
		<-d.gate
		done(n, err)
	})
}

// TestMergeWaitsForFollower keeps four reads in flight and sends one more: the reader
// holds it back for a read that continues it (sent only once the reader waits, so
// it cannot have been buffered before) and answers both with one command. A read
// that nothing follows is still answered, while the four are in flight; and with
// nothing in flight the reader does not wait at all.
func TestMergeWaitsForFollower(t *testing.T) {
	const n = 64 << 10
	dev, data := newHeldPipeMem(9)
	srv := NewServer(dev, Options{})
	tc := serveTCP(t, srv)
	tc.c.SetReadDeadline(time.Now().Add(time.Minute)) // a lost reply fails, not hangs

	var mu sync.Mutex
	waits, follow := 0, []byte(nil)
	hook := func() {
		mu.Lock()
		defer mu.Unlock()
		waits++
		if follow != nil {
			if _, err := tc.c.Write(follow); err != nil {
				t.Error(err)
			}
			follow = nil
		}
	}
	followerWaitHook.Store(&hook)
	defer followerWaitHook.Store(nil)
	const small = 4 << 10 // the held reads: below SpliceMin, so never piped nor merged
	expect := func(what string, want map[uint64]uint64) {
		t.Helper()
		length := func(cookie uint64) int {
			if cookie >= 10 && cookie < 14 {
				return small
			}
			return n
		}
		for range want {
			cookie, errno, b, err := tc.recv(length)
			off, ok := want[cookie]
			if err != nil || errno != 0 || !ok {
				t.Fatalf("%s: reply %d: errno %d, %v", what, cookie, errno, err)
			}
			if !bytes.Equal(b, data[off:off+uint64(length(cookie))]) {
				t.Fatalf("%s: read %d (at %d) returned other bytes", what, cookie, off)
			}
		}
	}
	waitsNow := func() int { mu.Lock(); defer mu.Unlock(); return waits }

	// Nothing in flight: no wait.
	tc.c.Write(encodeRequest(cmdRead, 0, 1, 0, n, nil))
	expect("alone", map[uint64]uint64{1: 0})
	if w := waitsNow(); w != 0 {
		t.Fatalf("the reader waited %d times for a follower with nothing in flight", w)
	}
	// Four held reads in flight.
	var held []byte
	for i := range uint64(4) {
		held = append(held, encodeRequest(cmdRead, 0, 10+i, 4<<20+i<<20, small, nil)...)
	}
	tc.c.Write(held)
	for range 4 {
		select {
		case <-dev.started:
		case <-time.After(10 * time.Second):
			t.Fatal("the held reads did not reach the device")
		}
	}
	// A read, and its follower sent while the reader waits: one command.
	mu.Lock()
	follow = encodeRequest(cmdRead, 0, 3, 1<<20+n, n, nil)
	mu.Unlock()
	before := srv.Stats()
	tc.c.Write(encodeRequest(cmdRead, 0, 2, 1<<20, n, nil))
	expect("merged", map[uint64]uint64{2: 1 << 20})
	mu.Lock()
	unsent := follow != nil
	mu.Unlock()
	if unsent {
		t.Fatal("the read was answered without the reader waiting for a follower, four reads in flight")
	}
	expect("merged", map[uint64]uint64{3: 1<<20 + n})
	if st := srv.Stats(); st.MergedReads-before.MergedReads != 1 || waitsNow() == 0 {
		t.Errorf("%d merged reads after %d waits, want the follower merged after a wait", st.MergedReads-before.MergedReads, waitsNow())
	}
	// A read that nothing follows: answered after the wait, the held reads still held.
	w0 := waitsNow()
	tc.c.Write(encodeRequest(cmdRead, 0, 4, 2<<20, n, nil))
	expect("unfollowed", map[uint64]uint64{4: 2 << 20})
	if waitsNow() == w0 {
		t.Error("the reader did not wait for a follower with four reads in flight")
	}
	// Reads that nothing follows, as random reads: the reader soon stops waiting
	// for each, and asks again only now and then.
	w0 = waitsNow()
	for i := range uint64(32) {
		off := uint64(2<<20) + (i*7%32)*n
		tc.c.Write(encodeRequest(cmdRead, 0, 100+i, off, n, nil))
		expect("random", map[uint64]uint64{100 + i: off})
	}
	if w := waitsNow() - w0; w > 4 {
		t.Errorf("the reader waited %d times for 32 reads that nothing followed, want a few probes", w)
	}
	close(dev.gate)
	expect("held", map[uint64]uint64{10: 4 << 20, 11: 5 << 20, 12: 6 << 20, 13: 7 << 20})
}

// TestKernelConnectionIsNeverSpliced serves a connection as the kernel's
// (ServeTransmission, a socketpair) with a device that can splice, and a large read
// behind four in flight: on any other connection it would go through a pipe, and the
// reader might hold it for a follower. On the kernel's it is copied (its receive
// worker takes a spliced reply a segment at a time: slower on 6.1 and 6.12 alike),
// so it is neither spliced nor held.
func TestKernelConnectionIsNeverSpliced(t *testing.T) {
	const n = 64 << 10
	const small = 4 << 10
	dev, data := newHeldPipeMem(11)
	srv := NewServer(dev, Options{})
	if min := srv.opts.SpliceMin; min <= 0 || min > n {
		t.Fatalf("SpliceMin %d: a %d-byte read would not be spliced anywhere, the test proves nothing", min, n)
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(pair[0]), "server")
	sc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	cf := os.NewFile(uintptr(pair[1]), "client")
	cc, err := net.FileConn(cf)
	cf.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.ServeTransmission(ctx, sc)
	tc := &testClient{c: cc, r: newReader(cc)}
	tc.c.SetReadDeadline(time.Now().Add(time.Minute))
	var waits atomic.Int32
	hook := func() { waits.Add(1) }
	followerWaitHook.Store(&hook)
	defer followerWaitHook.Store(nil)

	var held []byte
	for i := range uint64(4) {
		held = append(held, encodeRequest(cmdRead, 0, 10+i, 4<<20+i<<20, small, nil)...)
	}
	tc.c.Write(held)
	for range 4 {
		<-dev.started
	}
	tc.c.Write(encodeRequest(cmdRead, 0, 1, 1<<20, n, nil))
	cookie, errno, b, err := tc.recv(func(uint64) int { return n })
	if err != nil || errno != 0 || cookie != 1 || !bytes.Equal(b, data[1<<20:1<<20+n]) {
		t.Fatalf("reply %d, errno %d, %v (or other bytes)", cookie, errno, err)
	}
	close(dev.gate)
	for range 4 {
		if _, errno, _, err := tc.recv(func(uint64) int { return small }); err != nil || errno != 0 {
			t.Fatalf("held read: errno %d, %v", errno, err)
		}
	}
	if st := srv.Stats(); st.SplicedBytes != 0 {
		t.Errorf("%d bytes spliced into the kernel's socket, want copies", st.SplicedBytes)
	}
	if w := waits.Load(); w != 0 {
		t.Errorf("the reader waited %d times for a follower on the kernel's connection", w)
	}
}
