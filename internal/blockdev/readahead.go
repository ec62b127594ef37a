package blockdev

import (
	"sync"
	"sync/atomic"

	"github.com/isboot/isboot/iscsi/pipebuf"
)

// ReadAhead keeps reads in flight ahead of a sequential reader. A reader that waits
// for each read before it sends the next (dd, a backup, a database scan with O_DIRECT)
// otherwise leaves the link idle while each answer travels; with the next ranges
// already on their way, that time overlaps the reader's own. The kernel's read-ahead
// does this for buffered reads only.
//
// A run is two reads of the same length, MinRead..MaxRead bytes, the second starting
// where the first ended. The same length tells a reader that waits for each read
// (dd, O_DIRECT) from the kernel's own read-ahead of a file, whose windows grow
// (128 KiB, 256 KiB, ...) and then stop at the file's end: read ahead of those, a
// systemd boot fetched 13-15 ranges and used one. The next ReadAheadDepth ranges after it, each of the same length, are then fetched into
// buffers of the wrapper's own. A write, unmap or zeroing of any range drops them, and
// no read-ahead starts while one is in flight: a later read never sees older bytes
// than a completed write left. Memory: at most ReadAheadDepth+1 buffers of MaxRead.
type ReadAhead struct {
	Device
	async    Async
	min, max int

	mu     sync.Mutex
	next   int64       // where the last read ended: the next one is sequential if it starts here
	last   int         // the last read's length
	ahead  []*prefetch // the ranges fetched ahead, in order, each following the one before
	writes int         // writes in flight
	free   [][]byte    // buffers for reuse
	// allocated counts the buffers made: ReadAheadDepth+1 for any run (tests).
	allocated int

	fetched, hits, wasted atomic.Uint64
}

// ReadAheadDepth is how many ranges are fetched ahead. One: in the TCG guest a second
// 1 MiB range in flight made sequential reads slower (47-52 against 63-72 MiB/s, idle
// CPU back from 2.4 to 5-6 ms per MiB), the daemon falling behind its socket.
const ReadAheadDepth = 1

// ReadAheadStats counts reads fetched ahead, reads served from them, and those dropped
// unread (a write came, or the reader went elsewhere).
type ReadAheadStats struct{ Fetched, Hits, Wasted uint64 }

// prefetch is one range being or having been fetched ahead.
type prefetch struct {
	off     int64
	buf     []byte
	done    bool
	err     error
	dropped bool // no longer in r.ahead: its buffer is freed once it completes
	waiters []waiter
}

func (pf *prefetch) end() int64 { return pf.off + int64(len(pf.buf)) }

type waiter struct {
	p    []byte
	off  int64
	done func(int, error)
	// swap, when set, takes the prefetch buffer itself if p can stand in for it.
	swap func([]byte, error)
}

// answer completes w with the range's bytes: by exchange when it may and p can take
// the buffer's place (same length and capacity, the whole range), else by copy. It
// reports whether pf.buf was given away; p is then the range's buffer.
func (w *waiter) answer(pf *prefetch) (gave bool) {
	if w.swap != nil && w.off == pf.off && len(w.p) == len(pf.buf) && cap(w.p) == cap(pf.buf) {
		pf.buf, w.p = w.p, pf.buf
		return true
	}
	copy(w.p, pf.buf[w.off-pf.off:])
	return false
}

func (w *waiter) finish(err error) {
	if w.swap != nil {
		w.swap(w.p, err)
	} else {
		w.done(len(w.p), err)
	}
}

// retry reads w's range from the device itself, after a read ahead failed.
func (r *ReadAhead) retry(w waiter) {
	if w.swap != nil {
		r.async.ReadAtAsync(w.p, w.off, func(_ int, err error) { w.swap(w.p, err) })
	} else {
		r.async.ReadAtAsync(w.p, w.off, w.done)
	}
}

// Default read-ahead bounds: reads below 128 KiB are not a stream worth anticipating,
// and 1 MiB (a dd's usual block) bounds the memory.
const (
	DefaultReadAheadMin = 128 << 10
	DefaultReadAheadMax = 1 << 20
)

// NewReadAhead wraps dev. It returns dev itself when dev has no asynchronous path or
// maxRead is not positive: read-ahead needs a read that can start without a goroutine.
// The wrapper keeps dev's allocation map (Extenter) and spliced reads (PipeReader).
func NewReadAhead(dev Device, minRead, maxRead int) Device {
	a, ok := dev.(Async)
	if !ok || maxRead <= 0 {
		return dev
	}
	minRead = max(minRead, dev.BlockSize())
	r := &ReadAhead{Device: dev, async: a, min: minRead, max: max(maxRead, minRead), next: -1}
	_, ext := dev.(Extenter)
	_, piped := dev.(PipeReader)
	switch {
	case ext && piped:
		return &readAheadExtPipe{r}
	case ext:
		return &readAheadExt{r}
	case piped:
		return &readAheadPipe{r}
	}
	return r
}

type (
	readAheadExt     struct{ *ReadAhead }
	readAheadPipe    struct{ *ReadAhead }
	readAheadExtPipe struct{ *ReadAhead }
)

func (r *readAheadExt) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	return r.Device.(Extenter).Extents(dst, off, length)
}

func (r *readAheadExtPipe) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	return r.Device.(Extenter).Extents(dst, off, length)
}

func (r *readAheadPipe) ReadAtPipe(pipe *pipebuf.Pipe, n int, off int64, done func(int, error)) bool {
	return r.Device.(PipeReader).ReadAtPipe(pipe, n, off, done)
}

func (r *readAheadExtPipe) ReadAtPipe(pipe *pipebuf.Pipe, n int, off int64, done func(int, error)) bool {
	return r.Device.(PipeReader).ReadAtPipe(pipe, n, off, done)
}

// ReadAheadStatsOf returns the counters of a device NewReadAhead wrapped, or nil.
func ReadAheadStatsOf(d Device) *ReadAheadStats {
	r, ok := d.(interface{ Stats() ReadAheadStats })
	if !ok {
		return nil
	}
	st := r.Stats()
	return &st
}

// Unwrap returns the wrapped device.
func (r *ReadAhead) Unwrap() Device { return r.Device }

// Stats returns the counters.
func (r *ReadAhead) Stats() ReadAheadStats {
	return ReadAheadStats{Fetched: r.fetched.Load(), Hits: r.hits.Load(), Wasted: r.wasted.Load()}
}

// ReadAtAsync serves the read from a range fetched ahead when one holds it, and
// fetches the ranges after it when the read continues a run.
func (r *ReadAhead) ReadAtAsync(p []byte, off int64, done func(int, error)) {
	r.read(waiter{p: p, off: off, done: done})
}

// ReadAtAsyncExchange is ReadAtAsync that, when the read is exactly a range fetched
// ahead, answers with that range's buffer and keeps p for the next one: no copy.
func (r *ReadAhead) ReadAtAsyncExchange(p []byte, off int64, done func([]byte, error)) {
	r.read(waiter{p: p, off: off, swap: done})
}

func (r *ReadAhead) read(w waiter) {
	p, off := w.p, w.off
	end := off + int64(len(p))
	r.mu.Lock()
	run := off == r.next && len(p) == r.last && len(p) >= r.min && len(p) <= r.max
	r.next, r.last = end, len(p)
	i := len(r.ahead) - 1
	for ; i >= 0 && (off < r.ahead[i].off || end > r.ahead[i].end()); i-- {
	}
	if i < 0 {
		// Not fetched ahead: read it, and fetch what follows if this continues a run.
		if len(r.ahead) > 0 {
			r.dropLocked() // the reader went elsewhere
		}
		r.mu.Unlock()
		r.retry(w)
		if run {
			r.fetchAhead(end, len(p))
		}
		return
	}
	r.hits.Add(1)
	pf := r.ahead[i]
	// Ranges before this one were skipped: drop them. This one goes once read to its end.
	for _, old := range r.ahead[:i] {
		r.dropOne(old)
	}
	r.ahead = r.ahead[i:]
	consumed := end == pf.end()
	if consumed {
		r.ahead = r.ahead[1:]
		pf.dropped = true
	}
	if !pf.done {
		if !consumed {
			w.swap, w.done = nil, swapToDone(w) // others read the buffer after this one
		}
		pf.waiters = append(pf.waiters, w)
		r.mu.Unlock()
	} else {
		err := pf.err
		if err == nil {
			if !consumed {
				w.swap, w.done = nil, swapToDone(w)
			}
			w.answer(pf)
		}
		if consumed {
			r.recycle(pf.buf)
		}
		r.mu.Unlock()
		if err != nil {
			r.retry(w) // the read ahead failed: this one tries itself
		} else {
			w.finish(nil)
		}
	}
	if consumed && run {
		r.fetchAhead(end, len(p))
	}
}

// fetchAhead keeps ReadAheadDepth ranges of n bytes on their way from off on, unless a
// write is in flight or the device ends first.
func (r *ReadAhead) fetchAhead(off int64, n int) {
	size := r.Device.Size()
	r.mu.Lock()
	if r.writes > 0 {
		r.mu.Unlock()
		return
	}
	if len(r.ahead) > 0 && r.ahead[0].off != off {
		r.dropLocked() // not the ranges this reader wants
	}
	var start []*prefetch
	for at := off; len(r.ahead) < ReadAheadDepth; {
		if k := len(r.ahead); k > 0 {
			at = r.ahead[k-1].end()
		}
		if at >= size {
			break
		}
		pf := &prefetch{off: at, buf: r.bufLocked(int(min(int64(n), size-at)))}
		r.ahead = append(r.ahead, pf)
		start = append(start, pf)
	}
	r.mu.Unlock()
	for _, pf := range start {
		r.fetched.Add(1)
		r.async.ReadAtAsync(pf.buf, pf.off, func(_ int, err error) { r.complete(pf, err) })
	}
}

// complete runs on the device's completion path: it hands the bytes to the reads that
// came for them while they travelled.
func (r *ReadAhead) complete(pf *prefetch, err error) {
	r.mu.Lock()
	pf.done, pf.err = true, err
	waiters := pf.waiters
	pf.waiters = nil
	if err == nil {
		for i := range waiters {
			waiters[i].answer(pf) // only the last, which consumed the range, may exchange
		}
	}
	if pf.dropped {
		r.recycle(pf.buf)
	}
	r.mu.Unlock()
	if err != nil && len(waiters) > 0 {
		// Each read tries on its own, from a goroutine of its own: this is the
		// device's completion path, which must not wait for a free command slot.
		go func() {
			for _, w := range waiters {
				r.retry(w)
			}
		}()
		return
	}
	for i := range waiters {
		waiters[i].finish(nil)
	}
}

// swapToDone turns an exchanging waiter into a copying one: its range is still read
// by others, so its buffer cannot be handed over.
func swapToDone(w waiter) func(int, error) {
	if w.swap == nil {
		return w.done
	}
	p, swap := w.p, w.swap
	return func(_ int, err error) { swap(p, err) }
}

// dropLocked forgets the ranges fetched ahead; their buffers are reused once they
// complete.
func (r *ReadAhead) dropLocked() {
	for _, pf := range r.ahead {
		r.dropOne(pf)
	}
	r.ahead = r.ahead[:0]
}

func (r *ReadAhead) dropOne(pf *prefetch) {
	pf.dropped = true
	r.wasted.Add(1)
	if pf.done {
		r.recycle(pf.buf)
	}
}

func (r *ReadAhead) bufLocked(n int) []byte {
	if k := len(r.free); k > 0 {
		b := r.free[k-1]
		r.free = r.free[:k-1]
		return b[:n]
	}
	r.allocated++
	return make([]byte, n, r.max)
}

// recycle keeps b for the next range. Up to ReadAheadDepth+1 are kept: a range
// consumed while still in flight holds its buffer while the next range needs one,
// so a run uses that many. Keeping fewer dropped one whenever reads alternated between
// finding their range done and waiting for it, and the garbage a megabyte at a time
// let the daemon's heap (and RSS) grow to its collector's goal, 75 MiB in the TCG
// guest, where a 16 MiB steady state is the rule.
func (r *ReadAhead) recycle(b []byte) {
	if cap(b) == r.max && len(r.free) <= ReadAheadDepth {
		r.free = append(r.free, b[:0])
	}
}

// writeStarts drops the range fetched ahead and holds off new ones until writeEnds.
func (r *ReadAhead) writeStarts() {
	r.mu.Lock()
	r.writes++
	r.dropLocked()
	r.next = -1
	r.mu.Unlock()
}

func (r *ReadAhead) writeEnds() {
	r.mu.Lock()
	r.writes--
	r.mu.Unlock()
}

func (r *ReadAhead) WriteAtAsync(p []byte, off int64, fua bool, done func(int, error)) {
	r.writeStarts()
	r.async.WriteAtAsync(p, off, fua, func(n int, err error) {
		r.writeEnds()
		done(n, err)
	})
}

func (r *ReadAhead) WriteAt(p []byte, off int64) (int, error) {
	r.writeStarts()
	defer r.writeEnds()
	return r.Device.WriteAt(p, off)
}

func (r *ReadAhead) WriteAtFUA(p []byte, off int64) (int, error) {
	r.writeStarts()
	defer r.writeEnds()
	return r.Device.WriteAtFUA(p, off)
}

func (r *ReadAhead) Unmap(off, length int64) error {
	r.writeStarts()
	defer r.writeEnds()
	return r.Device.Unmap(off, length)
}

func (r *ReadAhead) WriteZeroes(off, length int64) error {
	r.writeStarts()
	defer r.writeEnds()
	return r.Device.WriteZeroes(off, length)
}
