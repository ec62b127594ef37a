package iscsi

import (
	"bytes"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/isboot/isboot/internal/testkit/testtarget"
)

// asyncAll starts fn for each of n extents from one goroutine, as the NBD server does
// (with more extents than the session has slots, starting also waits for free ones),
// and returns the errors once every done ran.
func asyncAll(n int, fn func(i int, done func(int, error))) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	wg.Add(n)
	for i := range n {
		fn(i, func(_ int, err error) {
			errs[i] = err
			wg.Done()
		})
	}
	wg.Wait()
	return errs
}

// TestAsyncReadWrite writes and reads back through the asynchronous path while the
// proxy cuts every connection after a few MB: completions arrive on the reader,
// reissued commands complete once, and every byte is where it was written.
func TestAsyncReadWrite(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{Size: 64 << 20})
	p := newFaultProxy(t, d.Addr())
	s := dial(t, faultConfig(d, p.Addr()))
	l := s.LUN()
	const extents, size = 512, 64 << 10 // 32 MiB in 64 KiB writes, 16x the slots
	p.cutAfter.Store(5 << 20)
	errs := asyncAll(extents, func(i int, done func(int, error)) {
		l.WriteAtAsync(pattern(size, uint64(i)), int64(i)*size, i%7 == 0, done)
	})
	p.cutAfter.Store(0)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if s.Stats().Reconnects == 0 {
		t.Fatal("the proxy cut no connection: the test did not exercise reissue")
	}
	bufs := make([][]byte, extents)
	errs = asyncAll(extents, func(i int, done func(int, error)) {
		bufs[i] = make([]byte, size)
		l.ReadAtAsync(bufs[i], int64(i)*size, done)
	})
	for i := range extents {
		if errs[i] != nil {
			t.Fatalf("read %d: %v", i, errs[i])
		}
		if !bytes.Equal(bufs[i], pattern(size, uint64(i))) {
			t.Fatalf("extent %d reads back other bytes", i)
		}
	}
	// Refusals come back through done, not as a hang.
	errs = asyncAll(1, func(_ int, done func(int, error)) { l.ReadAtAsync(make([]byte, 4096), l.Size(), done) })
	if !errors.Is(errs[0], ErrOutOfRange) {
		t.Fatalf("read past the end: %v", errs[0])
	}
	st := s.Stats()
	if st.Errors != 0 {
		t.Fatalf("stats: %+v", st)
	}
	t.Logf("stats: %+v", st)
	// After Close, done still runs, with ErrClosed.
	s.Close()
	errs = asyncAll(1, func(_ int, done func(int, error)) { l.ReadAtAsync(make([]byte, 4096), 0, done) })
	if !errors.Is(errs[0], ErrClosed) {
		t.Fatalf("read after Close: %v", errs[0])
	}
}

// TestLoneAsyncCommandFlushedByItsCaller reads one block at a time through the
// asynchronous path: a command alone in flight leaves in its caller's own write, and
// the writer goroutine is never woken to flush it. Reads 32 at a time still leave
// their flushes to the writer, which batches them.
func TestLoneAsyncCommandFlushedByItsCaller(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{Size: 8 << 20})
	s := dial(t, faultConfig(d, d.Addr()))
	l := s.LUN()
	var flushes atomic.Int64
	hook := func() { flushes.Add(1) }
	writerFlushHook.Store(&hook)
	defer writerFlushHook.Store(nil)
	buf := make([]byte, 4096)
	for i := range 64 {
		done := make(chan error, 1)
		l.ReadAtAsync(buf, int64(i)*4096, func(_ int, err error) { done <- err })
		if err := <-done; err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	if n := flushes.Load(); n != 0 {
		t.Errorf("the writer goroutine flushed %d times for 64 reads made one at a time, want 0", n)
	}
	errs := asyncAll(256, func(i int, done func(int, error)) {
		l.ReadAtAsync(make([]byte, 4096), int64(i)*4096, done)
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("batched read %d: %v", i, err)
		}
	}
	if flushes.Load() == 0 {
		t.Error("256 reads started together: the writer never flushed, so nothing was batched")
	}
}
