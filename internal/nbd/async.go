package nbd

import "github.com/isboot/isboot/iscsi/pipebuf"

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
	cn      *conn
	req     request
	buf     []byte
	pipe    *pipebuf.Pipe // a read's bytes, when they come spliced (startPiped)
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
// flusher to splice to the client, and reports whether it did.
func (cn *conn) startPiped(req request, payload int64) bool {
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
	cn.wg.Add(1)
	if cn.piped.ReadAtPipe(p, int(req.length), int64(req.off), o.doneFn) {
		return true
	}
	cn.wg.Done()
	o.pipe = nil
	cn.putPipe(p)
	select {
	case cn.ops <- o:
	default:
	}
	return false
}

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
	o.errno = s.errno(o.req, err)
	s.commands.Add(1)
	switch {
	case o.errno != 0:
		s.errs.Add(1)
	case o.req.typ == cmdRead:
		s.readBytes.Add(uint64(o.req.length))
	default:
		s.writeBytes.Add(uint64(o.req.length))
	}
	if cn.replyAlone(o) {
		cn.finish(o)
		return
	}
	cn.doneMu.Lock()
	cn.finished = append(cn.finished, o)
	cn.doneMu.Unlock()
	select {
	case cn.kick <- struct{}{}:
	default:
	}
}

// replyBuffer is the size of a connection's reply buffer.
const replyBuffer = 64 << 10

// aloneReplyMax bounds the replies replyAlone writes: what the socket does not take
// at once goes to the reply buffer, which must hold it without writing.
const aloneReplyMax = replyBuffer / 2

// replyAlone answers o, a request that was alone on a kernel connection, from the
// goroutine that completed it (the iSCSI reader), straight into the socket. At queue
// depth 1, as systemd mostly reads at boot, waking the flusher cost more than the
// write. It never waits for the socket, so a client that stops reading still holds
// up only its own connection: what the socket does not take at once is copied to
// the reply buffer for the flusher. It reports whether it answered o; the caller
// then finishes it.
func (cn *conn) replyAlone(o *asyncOp) bool {
	if cn.sock == nil || cn.neg.structured || o.pipe != nil || len(cn.slots) != 1 {
		return false
	}
	var data []byte
	if o.errno == 0 && o.req.typ == cmdRead {
		data = o.buf
	}
	if replySize+len(data) > aloneReplyMax || !cn.wmu.TryLock() {
		return false
	}
	defer cn.wmu.Unlock()
	if cn.werr != nil || cn.w.Buffered() > 0 || cn.waiting.Load() > 0 {
		return false
	}
	cn.doneMu.Lock()
	queued := len(cn.finished) > 0
	cn.doneMu.Unlock()
	if queued {
		return false
	}
	hdr := cn.simpleHeader(o.req.cookie, o.errno)
	cn.iov = [2][]byte{hdr, data}
	n, err := cn.sock.TryWritev(cn.iov[:])
	cn.iov = [2][]byte{}
	switch {
	case err != nil:
		cn.fail(err)
	case n < int64(len(hdr)):
		cn.w.Write(hdr[n:])
		cn.w.Write(data)
	case n < int64(len(hdr)+len(data)):
		cn.w.Write(data[n-int64(len(hdr)):])
	default:
		cn.s.aloneReplies.Add(1)
		return true
	}
	select { // the flusher sends the rest once the socket takes it
	case cn.kick <- struct{}{}:
	default:
	}
	return true
}

// finish returns a request's op, buffer and slot once its reply is written or
// buffered.
func (cn *conn) finish(o *asyncOp) {
	buf, payload := o.buf, o.payload
	if o.pipe != nil {
		cn.putPipe(o.pipe)
	}
	o.buf, o.pipe = nil, nil
	select {
	case cn.ops <- o:
	default:
	}
	cn.release(buf, payload)
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
				case o.pipe != nil && o.errno == 0:
					cn.writePipedReply(o.req, o.pipe)
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
