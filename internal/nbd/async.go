package nbd

// The kernel's requests take the device's asynchronous path when it has one (the
// iSCSI LUN): the request leaves from the connection's reader and the reply is
// written by whoever completes it, with no goroutine and no hand-off per request.
// Only the kernel gets this: a reply to a network client that stops reading would
// block the device's completion path for every other client.

// asyncOp is one request in flight on the asynchronous path. Ops are kept for reuse
// with their completion function bound once, so dispatching allocates nothing.
type asyncOp struct {
	cn      *conn
	req     request
	buf     []byte
	payload int64
	doneFn  func(int, error)
}

func (cn *conn) getOp() *asyncOp {
	select {
	case o := <-cn.ops:
		return o
	default:
	}
	o := &asyncOp{cn: cn}
	o.doneFn = o.done
	return o
}

// startAsync sends req to the device if it can take the asynchronous path and
// reports whether it did. Anything unusual (unaligned, invalid, read-only) goes the
// ordinary way, which knows how to answer it.
func (cn *conn) startAsync(req request, buf []byte, payload int64) bool {
	dev := cn.async
	if dev == nil || cn.gone.Load() || (req.typ != cmdRead && req.typ != cmdWrite) || req.flags&^cmdFlagFUA != 0 {
		return false
	}
	s := cn.s
	bs, size := uint64(s.blockSize()), uint64(s.dev.Size())
	if req.off%bs != 0 || uint64(req.length)%bs != 0 || req.off > size || uint64(req.length) > size-req.off ||
		payload != int64(req.length) || req.typ == cmdWrite && s.dev.ReadOnly() {
		return false
	}
	o := cn.getOp()
	o.req, o.buf, o.payload = req, buf, payload
	if req.typ == cmdRead {
		dev.ReadAtAsync(buf, int64(req.off), o.doneFn)
	} else {
		dev.WriteAtAsync(buf, int64(req.off), req.flags&cmdFlagFUA != 0, o.doneFn)
	}
	return true
}

// startFlusher sends the replies that completions leave in the buffer. Completions
// arrive back to back on the device's goroutine; the flusher runs when that goroutine
// pauses, so a batch of replies leaves in one write. The returned function stops it
// after a last flush.
func (cn *conn) startFlusher() (stop func()) {
	quit, exited := make(chan struct{}), make(chan struct{})
	flush := func() {
		cn.wmu.Lock()
		defer cn.wmu.Unlock()
		if cn.werr != nil {
			return
		}
		if err := cn.w.Flush(); err != nil {
			cn.werr = err
			cn.c.Close() // the reader sees the error and ends the connection
		}
	}
	go func() {
		defer close(exited)
		for {
			select {
			case <-cn.kick:
				flush()
			case <-quit:
				flush()
				return
			}
		}
	}()
	return func() { close(quit); <-exited }
}

// done replies and releases the request; it runs on the device's completion path.
func (o *asyncOp) done(_ int, err error) {
	cn, req, buf, payload := o.cn, o.req, o.buf, o.payload
	s := cn.s
	errno := s.errno(req, err)
	s.commands.Add(1)
	good := 0
	switch {
	case errno != 0:
		s.errs.Add(1)
	case req.typ == cmdRead:
		good = len(buf)
		s.readBytes.Add(uint64(len(buf)))
	default:
		s.writeBytes.Add(uint64(len(buf)))
	}
	cn.reply(req, errno, buf[:good])
	o.buf = nil
	select {
	case cn.ops <- o:
	default:
	}
	cn.release(buf, payload)
	cn.wg.Done()
}
