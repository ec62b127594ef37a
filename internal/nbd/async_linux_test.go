package nbd

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/iscsi"
)

// countingLUN counts the requests that took the asynchronous path.
type countingLUN struct {
	*iscsi.LUN
	async atomic.Int64
}

func (c *countingLUN) ReadAtAsync(p []byte, off int64, done func(int, error)) {
	c.async.Add(1)
	c.LUN.ReadAtAsync(p, off, done)
}

func (c *countingLUN) WriteAtAsync(p []byte, off int64, fua bool, done func(int, error)) {
	c.async.Add(1)
	c.LUN.WriteAtAsync(p, off, fua, done)
}

// TestKernelConnectionAsyncThroughISCSI serves a tgtd LUN as the kernel sees it (no
// handshake) and pipelines 64 requests at a time, aligned and not: aligned reads and
// writes are answered from the iSCSI reader, the rest the ordinary way, and every
// reply matches its request.
func TestKernelConnectionAsyncThroughISCSI(t *testing.T) {
	_, s := tgtdSession(t, testtarget.TgtdOptions{Size: 32 << 20}, "nbd-async", iscsi.Config{QueueDepth: 16})
	dev := &countingLUN{LUN: s.LUN()}
	srvEnd, cliEnd := net.Pipe()
	srv := NewServer(dev, Options{Logf: t.Logf})
	go srv.ServeTransmission(context.Background(), srvEnd)
	tc := &testClient{c: cliEnd, r: newReader(cliEnd)}
	defer tc.send(cmdDisc, 0, 0, 0, 0, nil)

	type extent struct{ off, n uint64 }
	var extents []extent
	for i := range uint64(256) {
		n := uint64(4096 << (i % 5)) // 4 KiB .. 64 KiB
		if i%9 == 0 {
			n = 1000 // unaligned: the ordinary path
		}
		extents = append(extents, extent{i * 128 << 10, n})
	}
	data := func(i int) []byte { return randBytes(int(extents[i].n), uint64(i)) }
	pipeline := func(typ uint16) map[uint64][]byte {
		got := map[uint64][]byte{}
		readLen := func(cookie uint64) int {
			if typ == cmdRead {
				return int(extents[cookie].n)
			}
			return 0
		}
		next := 0
		for len(got) < len(extents) {
			for next < len(extents) && next-len(got) < 64 {
				var payload []byte
				if typ == cmdWrite {
					payload = data(next)
				}
				e := extents[next]
				// Writes go from another goroutine: net.Pipe does not buffer.
				go tc.send(typ, 0, uint64(next), e.off, uint32(e.n), payload)
				next++
			}
			cookie, errno, b, err := tc.recv(readLen)
			if err != nil || errno != 0 {
				t.Fatalf("reply %d: errno %d, %v", cookie, errno, err)
			}
			got[cookie] = bytes.Clone(b)
		}
		return got
	}
	pipeline(cmdWrite)
	for cookie, b := range pipeline(cmdRead) {
		if !bytes.Equal(b, data(int(cookie))) {
			t.Fatalf("extent %d read back other bytes", cookie)
		}
	}
	if n := dev.async.Load(); n < 400 {
		t.Errorf("only %d of 512 requests took the asynchronous path", n)
	}
}

// TestStalledClientHoldsUpOnlyItself: a network client that sends reads and never
// takes its replies fills its own socket and the server's request buffers, but the
// LUN's completions go on, and once ReplyTimeout drops it another client of the same
// server is served as usual.
func TestStalledClientHoldsUpOnlyItself(t *testing.T) {
	d := testtarget.StartTgtd(t, testtarget.TgtdOptions{Port: testtarget.FreePort(t, 13400, 13449),
		ControlPort: 43, Size: 64 << 20})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := iscsi.Dial(ctx, iscsi.Config{Portals: []string{d.Addr()}, TargetName: d.IQN, LUN: 1,
		InitiatorName: "iqn.2026-01.org.isboot.test:nbd-stall"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sock, _ := serveUnix(t, s.LUN(), Options{Logf: t.Logf, ReplyTimeout: time.Second})
	stalled := dialTest(t, "unix", sock, "")
	// 128 x 1 MiB: far more than the socket buffers hold.
	go func() {
		for i := range uint64(128) {
			if stalled.send(cmdRead, 0, i, i%64<<20, 1<<20, nil) != nil {
				return
			}
		}
	}()
	time.Sleep(500 * time.Millisecond)
	other := dialTest(t, "unix", sock, "")
	p := randBytes(64<<10, 9)
	done := make(chan error, 1)
	go func() {
		if errno, _, err := other.do(cmdWrite, 0, 1<<20, uint32(len(p)), p); err != nil || errno != 0 {
			done <- fmt.Errorf("write: errno %d, %v", errno, err)
			return
		}
		errno, got, err := other.do(cmdRead, 0, 1<<20, uint32(len(p)), nil)
		if err != nil || errno != 0 || !bytes.Equal(got, p) {
			done <- fmt.Errorf("read back: errno %d, %v, equal %v", errno, err, bytes.Equal(got, p))
			return
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a client that stopped reading held up another client of the same LUN")
	}
	stalled.c.Close()
}

// zeroingLUN counts the device's WriteZeroes calls.
type zeroingLUN struct {
	countingLUN
	zeroes atomic.Int64
}

func (z *zeroingLUN) WriteZeroes(off, length int64) error {
	z.zeroes.Add(1)
	return z.LUN.WriteZeroes(off, length)
}

// A write of zeroes of 64 KiB or more goes to a target that lists WRITE SAME (tgtd)
// as WriteZeroes, not as data; other writes, and small ones, go as they came. What
// reads back is what was written either way.
func TestZeroWritesBecomeWriteSame(t *testing.T) {
	_, s := tgtdSession(t, testtarget.TgtdOptions{Size: 32 << 20}, "nbd-zeroes", iscsi.Config{QueueDepth: 16})
	if !s.LUN().ZeroesCheaply() {
		t.Fatal("tgtd lists WRITE SAME(16) in REPORT SUPPORTED OPERATION CODES, but the LUN does not use it")
	}
	dev := &zeroingLUN{countingLUN: countingLUN{LUN: s.LUN()}}
	srvEnd, cliEnd := net.Pipe()
	srv := NewServer(dev, Options{Logf: t.Logf})
	go srv.ServeTransmission(context.Background(), srvEnd)
	tc := &testClient{c: cliEnd, r: newReader(cliEnd)}
	defer tc.send(cmdDisc, 0, 0, 0, 0, nil)

	fill := bytes.Repeat([]byte{0xa5}, 1<<20)
	if errno, _, err := tc.do(cmdWrite, 0, 0, 1<<20, fill); err != nil || errno != 0 {
		t.Fatalf("write pattern: %d, %v", errno, err)
	}
	writes := []struct {
		off    uint64
		data   []byte
		zeroed bool // expected to go as WriteZeroes
	}{
		{0, make([]byte, 256<<10), true},
		{256 << 10, make([]byte, 32<<10), false}, // too small to look at
		{512 << 10, append(make([]byte, 128<<10-1), 1), false},
	}
	for _, w := range writes {
		before := dev.zeroes.Load()
		flags := uint16(0)
		if w.zeroed {
			flags = cmdFlagFUA
		}
		if errno, _, err := tc.do(cmdWrite, flags, w.off, uint32(len(w.data)), w.data); err != nil || errno != 0 {
			t.Fatalf("write %d at %d: %d, %v", len(w.data), w.off, errno, err)
		}
		if got := dev.zeroes.Load() - before; got != map[bool]int64{true: 1, false: 0}[w.zeroed] {
			t.Errorf("write %d at %d: %d WriteZeroes calls, want zeroed=%v", len(w.data), w.off, got, w.zeroed)
		}
	}
	want := bytes.Clone(fill)
	for _, w := range writes {
		copy(want[w.off:], w.data)
	}
	errno, got, err := tc.do(cmdRead, 0, 0, 1<<20, nil)
	if err != nil || errno != 0 || !bytes.Equal(got, want) {
		t.Fatalf("read back: errno %d, err %v, equal %v", errno, err, bytes.Equal(got, want))
	}
	if st := srv.Stats(); st.ZeroWrites != 1 || st.WriteBytes != 1<<20+256<<10+32<<10+128<<10 {
		t.Errorf("stats %+v: want 1 zero write, every written byte counted", st)
	}
}
