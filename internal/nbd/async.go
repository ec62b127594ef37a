package nbd

import (
	"sync/atomic"
	"time"

	"github.com/isboot/isboot/iscsi/pipebuf"
)

// Reads and writes take the device's asynchronous path when it has one (the iSCSI
// LUN): the request leaves from the connection's reader, and its completion, on the
// device's own goroutine, only queues the request for the connection's flusher, which
// writes every reply ready and then releases their buffers. No goroutine per request,
// and a batch of replies leaves in one write: on a busy (one-vCPU) machine the
// flusher runs when the completing goroutine pauses. The completion never writes to
// the socket, so a client that stops reading holds up only its own connection, until
// Options.ReplyTimeout drops it and frees the buffers its requests hold.

// asyncOp is one request in flight on the asynchronous path. Ops are kept for reuse
// with their completion function bound once, so dispatching allocates nothing.
type asyncOp struct {
	cn   *conn
	req  request
	buf  []byte
	pipe *pipebuf.Pipe // a read's bytes, when they come spliced (startPiped)
	// subs are the requests a merged read answers, in order (req is then their
	// union); empty for a request on its own.
	subs    []request
	payload int64
	errno   uint32
	doneFn  func(int, error)
	swapFn  func([]byte, error)
}

func (cn *conn) getOp() *asyncOp {
	select {
	case o := <-cn.ops:
		return o
	default:
	}
	o := &asyncOp{cn: cn}
	o.doneFn = o.done
	o.swapFn = o.exchanged
	return o
}

// asyncOK reports whether req can take the asynchronous path.
func (cn *conn) asyncOK(req request, payload int64) bool {
	if cn.async == nil || cn.gone.Load() || (req.typ != cmdRead && req.typ != cmdWrite) || req.flags&^cmdFlagFUA != 0 {
		return false
	}
	s := cn.s
	bs, size := uint64(s.blockSize()), uint64(s.dev.Size())
	return req.off%bs == 0 && uint64(req.length)%bs == 0 && req.off <= size && uint64(req.length) <= size-req.off &&
		payload == int64(req.length) && (req.typ != cmdWrite || !s.dev.ReadOnly())
}

// startPiped starts a large read whose bytes the device leaves in a pipe, for the
// flusher to splice to the client, and reports whether it did. With merge, the reads
// that continue it and already wait in the reader's buffer go along in one command.
func (cn *conn) startPiped(req request, payload int64, merge bool) bool {
	if cn.piped == nil || req.typ != cmdRead || int64(req.length) < int64(cn.s.opts.SpliceMin) || !cn.asyncOK(req, payload) {
		return false
	}
	var p *pipebuf.Pipe
	select {
	case p = <-cn.pipes:
	default:
		p = new(pipebuf.Pipe)
	}
	o := cn.getOp()
	o.req, o.buf, o.payload, o.pipe = req, nil, payload, p
	if merge {
		o.req, o.subs = cn.mergeFollowers(req, o.subs[:0])
		o.payload = int64(o.req.length)
	}
	cn.wg.Add(1)
	if cn.piped.ReadAtPipe(p, int(o.req.length), int64(o.req.off), o.doneFn) {
		return true
	}
	cn.wg.Done()
	subs := o.subs
	o.pipe, o.subs = nil, subs[:0]
	cn.putPipe(p)
	select {
	case cn.ops <- o:
	default:
	}
	if len(subs) == 0 {
		return false
	}
	// The device cannot take a read this large (above its largest transfer): merge
	// less from now on, and start the reads taken along on their own.
	cn.mergeMax = max(cn.mergeMax/2, uint32(cn.s.opts.SpliceMin))
	for _, sub := range subs[1:] {
		cn.dispatch(sub, int64(sub.length), false) // reads: no payload to fail on
	}
	return false
}

// mergeMax is the largest read that adjacent piped reads are merged into. A network
// client copying a disk (nbdcopy: 256 KiB requests, 64 at a time) sends runs of
// adjacent reads; one SCSI command per MiB instead of four costs the target about
// 30 % less CPU per MiB (tgtd on this project's machine) and the gateway a fifth less.
// The kernel's own requests arrive merged already.
const mergeMax = 1 << 20

// A read the reader holds back for a follower waits at most mergeWait (in practice
// up to a millisecond: the runtime's poller sleeps in whole milliseconds), and only
// with mergeWaitDepth requests of the connection in flight.
const (
	mergeWait      = 200 * time.Microsecond
	mergeWaitDepth = 4
)

// mergeFollowers takes from the reader's buffer the reads that continue req (the
// next offset, the same flags), up to cn.mergeMax in all, and returns their union,
// with subs holding req and each read taken, in order (subs stays empty when none
// was). It takes only requests with a slot and budget free at once. When the buffer
// runs dry with enough of the connection's requests in flight, it may wait for the
// next request a little (mayWaitForFollower): a client that keeps many reads in
// flight sends its next ones as replies reach it, a few microseconds apart, and
// without the wait each would become a command of its own.
func (cn *conn) mergeFollowers(req request, subs []request) (request, []request) {
	union := req
	waited := false // the buffered request, if any, came during a wait
	for {
		if cn.r.Buffered() < requestSize {
			if waited {
				cn.followerMissed() // the wait ended empty
				break
			}
			if !cn.mayWaitForFollower(union) {
				break
			}
			if hook := followerWaitHook.Load(); hook != nil {
				(*hook)()
			}
			cn.c.SetReadDeadline(time.Now().Add(mergeWait))
			cn.r.Peek(requestSize) // an error other than the deadline comes again on the next read
			cn.c.SetReadDeadline(time.Time{})
			waited = true
			continue
		}
		b, _ := cn.r.Peek(requestSize)
		next, err := decodeRequest((*[requestSize]byte)(b))
		payload, ok := cn.continues(union, next, err)
		if !ok {
			break // a wait that another request ended cost little: not a miss
		}
		if !cn.tryTakeSlot() {
			return union, subs
		}
		if !cn.s.budget.TryAcquire(payload) {
			cn.returnSlot()
			break
		}
		if waited {
			cn.followerScore = min(max(cn.followerScore, 0)+1, followerScoreMax) // one follower is enough to wait again
			waited = false
		}
		cn.r.Discard(requestSize)
		if len(subs) == 0 {
			subs = append(subs, req)
		}
		subs = append(subs, next)
		union.length += next.length
	}
	return union, subs
}

// continues reports whether next (decoded with err) is a piped read that continues
// union and fits in a merge, and its payload.
func (cn *conn) continues(union, next request, err error) (int64, bool) {
	if err != nil || next.typ != cmdRead || next.flags != union.flags ||
		next.off != union.off+uint64(union.length) || uint64(union.length)+uint64(next.length) > uint64(cn.mergeMax) {
		return 0, false
	}
	payload, _ := cn.s.payload(next)
	return payload, int64(next.length) >= int64(cn.s.opts.SpliceMin) && cn.asyncOK(next, payload)
}

// mayWaitForFollower reports whether the reader may wait a little for a read that
// continues union: only while the device already works on mergeWaitDepth of this
// connection's requests, so the wait hides behind theirs, and only while union can
// grow. (The kernel's connection has no piped reads, so it never waits.) A client whose waits
// end empty (a last read, or random reads) is waited for again only every
// followerProbe chances.
func (cn *conn) mayWaitForFollower(union request) bool {
	if len(cn.slots) < mergeWaitDepth || union.length+uint32(cn.s.opts.SpliceMin) > cn.mergeMax {
		return false
	}
	if cn.followerScore < 0 {
		cn.followerProbes++
		return cn.followerProbes%followerProbe == 0
	}
	return true
}

func (cn *conn) followerMissed() { cn.followerScore = max(cn.followerScore-1, -followerScoreMax) }

// followerScore counts waits that brought a follower up and those that ended empty down,
// within ±followerScoreMax; below zero the reader waits only every followerProbe
// chances, to notice when followers come again.
const (
	followerScoreMax = 8
	followerProbe    = 16
)

func (cn *conn) putPipe(p *pipebuf.Pipe) {
	p.Reset()
	select {
	case cn.pipes <- p:
	default:
		p.Close()
	}
}

func (cn *conn) closePipes() {
	for {
		select {
		case p := <-cn.pipes:
			p.Close()
		default:
			return
		}
	}
}

// startAsync sends req to the device if it can take the asynchronous path and
// reports whether it did. Anything unusual (unaligned, invalid, read-only) goes the
// ordinary way, which knows how to answer it.
func (cn *conn) startAsync(req request, buf []byte, payload int64) bool {
	dev := cn.async
	if !cn.asyncOK(req, payload) {
		return false
	}
	o := cn.getOp()
	o.req, o.buf, o.payload = req, buf, payload
	switch {
	case req.typ == cmdRead && cn.exchanger != nil:
		cn.exchanger.ReadAtAsyncExchange(buf, int64(req.off), o.swapFn)
	case req.typ == cmdRead:
		dev.ReadAtAsync(buf, int64(req.off), o.doneFn)
	default:
		dev.WriteAtAsync(buf, int64(req.off), req.flags&cmdFlagFUA != 0, o.doneFn)
	}
	return true
}

// exchanged is done for a read answered in a buffer the device handed over: the
// request's own went to the device, and this one goes back to the pool in its place.
func (o *asyncOp) exchanged(q []byte, err error) {
	o.buf = q
	o.done(len(q), err)
}

// done records the outcome and hands the request to the flusher.
func (o *asyncOp) done(_ int, err error) {
	cn, s := o.cn, o.cn.s
	if len(o.subs) > 0 {
		if err != nil {
			go cn.rerun(o)
			return
		}
		s.commands.Add(uint64(len(o.subs)))
		s.mergedReads.Add(uint64(len(o.subs) - 1))
	} else {
		s.commands.Add(1)
	}
	o.errno = s.errno(o.req, err)
	switch {
	case o.errno != 0:
		s.errs.Add(1)
	case o.req.typ == cmdRead:
		s.readBytes.Add(uint64(o.req.length))
	default:
		s.writeBytes.Add(uint64(o.req.length))
	}
	cn.doneMu.Lock()
	cn.finished = append(cn.finished, o)
	cn.doneMu.Unlock()
	select {
	case cn.kick <- struct{}{}:
	default:
	}
}

// rerun answers the requests of a merged read that failed each with a read of its
// own, so a bad block fails only the requests that cover it, with its own error.
func (cn *conn) rerun(o *asyncOp) {
	s := cn.s
	o.pipe.Reset()
	for _, sub := range o.subs {
		if cn.gone.Load() {
			break
		}
		buf := s.bufs.get(int(sub.length))
		errno, good := s.do(sub, buf, cn.neg)
		s.commands.Add(1)
		if errno != 0 {
			s.errs.Add(1)
		}
		cn.reply(sub, errno, buf[:good])
		s.bufs.put(buf)
	}
	cn.finish(o)
}

// finish returns a request's op, buffer and slot (a merged read's: one per request
// it answered) once its reply is written or buffered.
func (cn *conn) finish(o *asyncOp) {
	buf, payload, extra := o.buf, o.payload, max(len(o.subs)-1, 0)
	if o.pipe != nil {
		cn.putPipe(o.pipe)
	}
	o.buf, o.pipe, o.subs = nil, nil, o.subs[:0]
	select {
	case cn.ops <- o:
	default:
	}
	cn.release(buf, payload)
	for range extra {
		cn.returnSlot()
	}
	cn.wg.Done()
}

// startFlusher runs the connection's flusher: it writes the replies of finished
// requests and whatever other replies left in the buffer, in one flush, then
// releases the finished requests. The returned function stops it after a last round.
func (cn *conn) startFlusher() (stop func()) {
	quit, exited := make(chan struct{}), make(chan struct{})
	var batch []*asyncOp
	round := func() {
		cn.doneMu.Lock()
		batch, cn.finished = cn.finished, batch[:0]
		cn.doneMu.Unlock()
		cn.wmu.Lock()
		if cn.werr == nil {
			cn.writeDeadline()
			for _, o := range batch {
				switch {
				case o.pipe != nil && o.errno == 0 && len(o.subs) > 0:
					for _, sub := range o.subs {
						cn.writePipedReply(sub, o.pipe, int(sub.length))
					}
				case o.pipe != nil && o.errno == 0:
					cn.writePipedReply(o.req, o.pipe, o.pipe.Len())
				case o.errno == 0 && o.req.typ == cmdRead:
					cn.writeReply(o.req, 0, o.buf)
				default:
					cn.writeReply(o.req, o.errno, nil)
				}
			}
			if cn.werr == nil {
				if err := cn.w.Flush(); err != nil {
					cn.fail(err)
				}
			}
		}
		cn.wmu.Unlock()
		for i, o := range batch {
			batch[i] = nil
			cn.finish(o)
		}
	}
	go func() {
		defer close(exited)
		for {
			select {
			case <-cn.kick:
				round()
			case <-quit:
				round()
				return
			}
		}
	}()
	return func() { close(quit); <-exited }
}

// followerWaitHook, when set (by tests), runs as the reader starts to wait for a
// follower.
var followerWaitHook atomic.Pointer[func()]
