package blockdev_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
)

// slowAsync is a Mem with an asynchronous path like a target's: a read takes its
// bytes when it is issued and completes later, from another goroutine, after a short
// random delay or, for a read at holdOff, when the test releases it.
type slowAsync struct {
	*blockdev.Mem
	mu      sync.Mutex
	holdOff int64 // -1: hold nothing
	held    []func()
	reads   int
	failOff int64 // the first read at this offset fails (0: none)
	delay   bool
}

func newSlow(m *blockdev.Mem) *slowAsync { return &slowAsync{Mem: m, holdOff: -1} }

func (s *slowAsync) ReadAtAsync(p []byte, off int64, done func(int, error)) {
	s.mu.Lock()
	s.reads++
	fail := s.failOff != 0 && off == s.failOff
	if fail {
		s.failOff = 0
	}
	snap := make([]byte, len(p))
	n, err := s.Mem.ReadAt(snap, off)
	if fail {
		n, err = 0, errors.New("target hiccup")
	}
	finish := func() {
		copy(p, snap)
		done(n, err)
	}
	if off == s.holdOff {
		s.held = append(s.held, finish)
		s.mu.Unlock()
		return
	}
	delay := s.delay
	s.mu.Unlock()
	go func() {
		if delay {
			time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		}
		finish()
	}()
}

func (s *slowAsync) WriteAtAsync(p []byte, off int64, fua bool, done func(int, error)) {
	n, err := s.Mem.WriteAt(p, off)
	go done(n, err)
}

func (s *slowAsync) release() {
	s.mu.Lock()
	held := s.held
	s.held, s.holdOff = nil, -1
	s.mu.Unlock()
	for _, f := range held {
		go f()
	}
}

func (s *slowAsync) readCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads
}

func readAsync(t *testing.T, d blockdev.Device, n int, off int64) []byte {
	t.Helper()
	p := make([]byte, n)
	ch := make(chan error, 1)
	d.(blockdev.Async).ReadAtAsync(p, off, func(k int, err error) {
		if err == nil && k != n {
			err = errors.New("short read")
		}
		ch <- err
	})
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("read %d at %d: %v", n, off, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("read %d at %d: no completion", n, off)
	}
	return p
}

func writeAsync(t *testing.T, d blockdev.Device, p []byte, off int64) {
	t.Helper()
	ch := make(chan error, 1)
	d.(blockdev.Async).WriteAtAsync(p, off, false, func(_ int, err error) { ch <- err })
	if err := <-ch; err != nil {
		t.Fatalf("write at %d: %v", off, err)
	}
}

// nextStep picks a random workload's next step from off: a write (true) one time in
// ten; otherwise a read of n bytes that continues the run cont times in ten and jumps
// elsewhere in the rest, starting over at 0 past the end.
func nextStep(r *rand.Rand, off int64, n, size, cont int) (int64, bool) {
	switch k := r.IntN(10); {
	case k >= 9:
		return off, true
	case k >= cont:
		off = int64(r.IntN(size/512)) * 512
	}
	if off+int64(n) > int64(size) {
		off = 0
	}
	return off, false
}

// writeRandom writes a few random sectors at a random place, to the reference and
// through the wrapper.
func writeRandom(t *testing.T, r *rand.Rand, ref *blockdev.Mem, ra blockdev.Device) {
	t.Helper()
	w := make([]byte, (1+r.IntN(16))*512)
	for j := range w {
		w[j] = byte(r.Uint32())
	}
	woff := int64(r.IntN((int(ref.Size())-len(w))/512)) * 512
	ref.WriteAt(w, woff)
	writeAsync(t, ra, w, woff)
}

func patterned(size int64, seed uint64) *blockdev.Mem {
	m := blockdev.NewMem(size, 512, false)
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	m.WriteAt(b, 0)
	return m
}

func TestReadAheadServesASequentialRun(t *testing.T) {
	const size, bs = 16 << 20, 256 << 10
	ref := patterned(size, 1)
	dev := newSlow(patterned(size, 1))
	ra := blockdev.NewReadAhead(dev, blockdev.DefaultReadAheadMin, blockdev.DefaultReadAheadMax)
	if _, ok := ra.(blockdev.Extenter); !ok {
		t.Error("the wrapper hides the device's allocation map")
	}
	want := make([]byte, bs)
	for off := int64(0); off < size; off += bs {
		got := readAsync(t, ra, bs, off)
		ref.ReadAt(want, off)
		if !bytes.Equal(got, want) {
			t.Fatalf("read at %d: wrong bytes", off)
		}
	}
	st := ra.(interface {
		Stats() blockdev.ReadAheadStats
	}).Stats()
	n := int(size / bs)
	// The first read starts nothing; the second starts the run; from the third on,
	// every read is served ahead. The last one fetched ahead would lie past the end.
	if st.Hits != uint64(n-2) || st.Fetched != uint64(n-2) || st.Wasted != 0 {
		t.Errorf("stats %+v, want %d hits, %d fetched, none wasted", st, n-2, n-2)
	}
	if got := dev.readCount(); got != n {
		t.Errorf("the device saw %d reads for %d: want each range read once", got, n)
	}
}

// A write to the range being fetched ahead, completed before the reader gets there,
// must be what the reader sees, though the target read that range before the write.
func TestReadAheadNeverServesBytesOlderThanAWrite(t *testing.T) {
	const bs = 256 << 10
	dev := newSlow(patterned(4<<20, 2))
	ra := blockdev.NewReadAhead(dev, blockdev.DefaultReadAheadMin, blockdev.DefaultReadAheadMax)
	dev.holdOff = 2 * bs // the read ahead of [2bs, 3bs) takes the old bytes and waits
	readAsync(t, ra, bs, 0)
	readAsync(t, ra, bs, bs)
	if got, want := dev.readCount(), 2+blockdev.ReadAheadDepth; got != want {
		t.Fatalf("device reads %d, want %d (two reads and the ranges ahead)", got, want)
	}
	fresh := bytes.Repeat([]byte{0xA5}, bs)
	writeAsync(t, ra, fresh, 2*bs)
	dev.release()
	if got := readAsync(t, ra, bs, 2*bs); !bytes.Equal(got, fresh) {
		t.Fatal("a read after a completed write got the bytes fetched ahead before it")
	}
	if st := ra.(interface {
		Stats() blockdev.ReadAheadStats
	}).Stats(); st.Wasted != uint64(blockdev.ReadAheadDepth) || st.Hits != 0 {
		t.Errorf("stats %+v, want every read ahead dropped and no hit", st)
	}
}

// A read ahead that fails costs nothing but time: the read waiting for it reads itself.
func TestReadAheadFailureFallsBack(t *testing.T) {
	const bs = 128 << 10
	m := patterned(2<<20, 3)
	dev := newSlow(patterned(2<<20, 3))
	ra := blockdev.NewReadAhead(dev, blockdev.DefaultReadAheadMin, blockdev.DefaultReadAheadMax)
	dev.holdOff = 2 * bs
	readAsync(t, ra, bs, 0)
	dev.failOff = 2 * bs // the read ahead fails
	readAsync(t, ra, bs, bs)
	go func() { time.Sleep(20 * time.Millisecond); dev.release() }()
	got := readAsync(t, ra, bs, 2*bs) // waits for the failed read ahead, then reads itself
	want := make([]byte, bs)
	m.ReadAt(want, 2*bs)
	if !bytes.Equal(got, want) {
		t.Fatal("wrong bytes after the read ahead failed")
	}
}

// A random mix of reads (many in sequential runs) and writes, each waited for, reads
// back exactly what an in-memory reference holds.
func TestReadAheadMatchesAReference(t *testing.T) {
	const size = 8 << 20
	ref := patterned(size, 4)
	dev := newSlow(patterned(size, 4))
	dev.delay = true
	ra := blockdev.NewReadAhead(dev, 64<<10, 512<<10)
	r := rand.New(rand.NewPCG(5, 6))
	var off int64
	for i := range 3000 {
		n := (1 + r.IntN(8)) * 64 << 10
		var write bool
		if off, write = nextStep(r, off, n, size, 6); write {
			writeRandom(t, r, ref, ra)
			continue
		}
		got := readAsync(t, ra, n, off)
		want := make([]byte, n)
		ref.ReadAt(want, off)
		if !bytes.Equal(got, want) {
			t.Fatalf("op %d: read %d at %d differs from the reference", i, n, off)
		}
		off += int64(n)
	}
	st := ra.(interface {
		Stats() blockdev.ReadAheadStats
	}).Stats()
	t.Logf("read-ahead: %+v", st)
	if st.Hits == 0 {
		t.Error("no read was served ahead: the test does not exercise the wrapper")
	}
}

func TestReadAheadLeavesSyncDevicesAlone(t *testing.T) {
	m := blockdev.NewMem(1<<20, 512, false)
	if d := blockdev.NewReadAhead(m, blockdev.DefaultReadAheadMin, blockdev.DefaultReadAheadMax); d != blockdev.Device(m) {
		t.Error("a device without an asynchronous path was wrapped")
	}
	if d := blockdev.NewReadAhead(newSlow(m), 0, 0); d == nil {
		t.Error("nil")
	}
}

// readExchange reads through ReadAtAsyncExchange into p and returns the buffer that
// came back, which may be the range's own.
func readExchange(t *testing.T, d blockdev.Device, p []byte, off int64) []byte {
	t.Helper()
	ch := make(chan []byte, 1)
	d.(blockdev.Exchanger).ReadAtAsyncExchange(p, off, func(q []byte, err error) {
		if err != nil {
			t.Errorf("read %d at %d: %v", len(p), off, err)
		}
		ch <- q
	})
	select {
	case q := <-ch:
		return q
	case <-time.After(5 * time.Second):
		t.Fatalf("read %d at %d: no completion", len(p), off)
		return nil
	}
}

// Reads that take the range's buffer in exchange for their own, as the NBD server's
// do, see the reference's bytes, and a buffer handed over is never written again by
// the wrapper: the reader keeps the last few and checks they did not change.
func TestReadAheadExchangeMatchesAReference(t *testing.T) {
	const size, maxRead = 8 << 20, 512 << 10
	ref := patterned(size, 7)
	dev := newSlow(patterned(size, 7))
	dev.delay = true
	ra := blockdev.NewReadAhead(dev, 64<<10, maxRead)
	r := rand.New(rand.NewPCG(8, 9))
	type held struct{ buf, want []byte }
	var pool [][]byte
	var kept []held
	exchanged := 0
	var off int64
	for i := range 2000 {
		n := maxRead
		if r.IntN(4) == 0 {
			n = (1 + r.IntN(7)) * 64 << 10 // shorter: served by copy
		}
		var write bool
		if off, write = nextStep(r, off, n, size, 7); write {
			writeRandom(t, r, ref, ra)
			continue
		}
		var p []byte
		if k := len(pool); k > 0 {
			p, pool = pool[k-1][:n], pool[:k-1]
		} else {
			p = make([]byte, n, maxRead)
		}
		q := readExchange(t, ra, p, off)
		if len(q) != n || cap(q) != maxRead {
			t.Fatalf("op %d: got a buffer of %d/%d bytes for a read of %d", i, len(q), cap(q), n)
		}
		if &q[:1][0] != &p[:1][0] {
			exchanged++
		}
		want := make([]byte, n)
		ref.ReadAt(want, off)
		if !bytes.Equal(q, want) {
			t.Fatalf("op %d: read %d at %d differs from the reference", i, n, off)
		}
		kept = append(kept, held{q, want})
		if len(kept) > 4 {
			pool = append(pool, kept[0].buf)
			kept = kept[1:]
		}
		for j, h := range kept {
			if !bytes.Equal(h.buf, h.want) {
				t.Fatalf("op %d: a buffer handed over %d reads ago was written since", i, len(kept)-1-j)
			}
		}
		off += int64(n)
	}
	t.Logf("%d reads answered by exchange, stats %+v", exchanged, blockdev.ReadAheadStatsOf(ra))
	if exchanged == 0 {
		t.Error("no read was answered by exchange: the test does not exercise it")
	}
}

// A long run whose reads sometimes find their range fetched and sometimes wait for it
// reuses the same few buffers: each one made and dropped was a megabyte of garbage,
// and the collector let the daemon's RSS grow to its goal.
func TestReadAheadReusesItsBuffers(t *testing.T) {
	const size, bs = 32 << 20, 256 << 10
	for _, exchange := range []bool{false, true} {
		dev := newSlow(patterned(size, 10))
		dev.delay = true
		ra := blockdev.NewReadAhead(dev, blockdev.DefaultReadAheadMin, bs)
		p := make([]byte, bs)
		for off := int64(0); off < size; off += bs {
			if exchange {
				p = readExchange(t, ra, p, off)
			} else {
				readAsync(t, ra, bs, off)
			}
			if off%(4*bs) == 0 {
				time.Sleep(300 * time.Microsecond) // let the next range arrive first
			}
		}
		st := blockdev.ReadAheadStatsOf(ra)
		made := blockdev.ReadAheadBuffersMade(ra)
		t.Logf("exchange=%v: %d buffers made for %+v", exchange, made, *st)
		if made > blockdev.ReadAheadDepth+1 {
			t.Errorf("exchange=%v: %d buffers made for one run, want at most %d", exchange, made, blockdev.ReadAheadDepth+1)
		}
	}
}

// The kernel's read-ahead of a file sends windows that grow and then stop at the
// file's end; fetching after them wasted nearly every range at boot. Only reads of
// one length, back to back, start a run.
func TestReadAheadIgnoresGrowingWindows(t *testing.T) {
	const size = 16 << 20
	dev := newSlow(patterned(size, 7))
	ra := blockdev.NewReadAhead(dev, blockdev.DefaultReadAheadMin, blockdev.DefaultReadAheadMax)
	stats := func() blockdev.ReadAheadStats {
		return ra.(interface {
			Stats() blockdev.ReadAheadStats
		}).Stats()
	}
	// Three files, each read as the kernel reads it: 128 KiB, 256 KiB, 512 KiB.
	for _, file := range []int64{1 << 20, 5 << 20, 9 << 20} {
		off := file
		for _, n := range []int{128 << 10, 256 << 10, 512 << 10} {
			readAsync(t, ra, n, off)
			off += int64(n)
		}
	}
	if st := stats(); st.Fetched != 0 {
		t.Fatalf("growing windows started %d reads ahead: %+v", st.Fetched, st)
	}
	// dd bs=1M: the second read starts the run.
	for off := int64(12 << 20); off < 15<<20; off += 1 << 20 {
		readAsync(t, ra, 1<<20, off)
	}
	if st := stats(); st.Fetched != 2 || st.Hits != 1 {
		t.Fatalf("three 1 MiB reads in a row: %+v, want 2 fetched, 1 hit", st)
	}
}
