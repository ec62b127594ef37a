package nbd

import (
	"encoding/binary"
	"time"

	"github.com/isboot/isboot/iscsi/pipebuf"
)

// Replies: simple and structured, built in place behind one writer lock.

// lock takes the reply writer. It reports false, holding nothing, when the
// connection can no longer be written.
func (cn *conn) lock() bool {
	cn.waiting.Add(1)
	cn.wmu.Lock()
	cn.last = cn.waiting.Add(-1) == 0
	if cn.werr != nil {
		cn.wmu.Unlock()
		return false
	}
	cn.writeDeadline()
	return true
}

// writeDeadline bounds the reply writes that follow. Caller holds the lock. The
// deadline moves only once half of it has passed: setting it costs a timer update,
// which a reply need not pay.
func (cn *conn) writeDeadline() {
	if cn.neg.kernel {
		return
	}
	now := time.Now()
	if now.Sub(cn.deadlineSet) > cn.s.opts.ReplyTimeout/2 {
		cn.c.SetWriteDeadline(now.Add(cn.s.opts.ReplyTimeout))
		cn.deadlineSet = now
	}
}

// unlock releases the reply writer; the last of the replies queued for it flushes.
func (cn *conn) unlock() {
	defer cn.wmu.Unlock()
	if !cn.last {
		return // a write error sticks in cn.w and surfaces at the last writer's Flush
	}
	if cn.kick != nil {
		select { // the flusher sends what the batch of completions left
		case cn.kick <- struct{}{}:
		default:
		}
		return
	}
	if err := cn.w.Flush(); err != nil {
		cn.fail(err)
	}
}

// fail records the first reply write error. Caller holds the lock.
func (cn *conn) fail(err error) {
	if cn.werr == nil {
		cn.werr = err
		cn.c.Close() // the reader sees the error and ends the connection
	}
}

// writePipedReply answers a successful read whose n bytes are the next in p: the
// header goes through the buffer, which is flushed, and the bytes are spliced after
// it. Caller holds the lock.
func (cn *conn) writePipedReply(req request, p *pipebuf.Pipe, n int) {
	if cn.werr != nil {
		return
	}
	if cn.neg.structured {
		b := cn.chunk(replyFlagDone, replyOffsetData, req.cookie, 8+uint32(n))
		binary.BigEndian.PutUint64(b, req.off)
		cn.w.Write(cn.hdr[:chunkSize+8])
	} else {
		cn.simple(req.cookie, 0)
	}
	err := cn.w.Flush()
	if err == nil {
		err = p.SpliceNTo(cn.raw, n)
	}
	if err == nil {
		cn.s.spliced.Add(uint64(n))
	}
	if err != nil {
		cn.fail(err)
	}
}

// simple writes a simple reply header. Caller holds the lock.
func (cn *conn) simple(cookie uint64, errno uint32) {
	binary.BigEndian.PutUint32(cn.hdr[0:], magicSimpleRepl)
	binary.BigEndian.PutUint32(cn.hdr[4:], errno)
	binary.BigEndian.PutUint64(cn.hdr[8:], cookie)
	cn.w.Write(cn.hdr[:replySize])
}

// chunk fills a structured reply chunk header into cn.hdr and returns the bytes
// after it, for the caller to fill the fixed part of the payload. Caller holds the
// lock.
func (cn *conn) chunk(flags, typ uint16, cookie uint64, length uint32) []byte {
	binary.BigEndian.PutUint32(cn.hdr[0:], magicStructRepl)
	binary.BigEndian.PutUint16(cn.hdr[4:], flags)
	binary.BigEndian.PutUint16(cn.hdr[6:], typ)
	binary.BigEndian.PutUint64(cn.hdr[8:], cookie)
	binary.BigEndian.PutUint32(cn.hdr[16:], length)
	return cn.hdr[chunkSize:]
}

// reply answers req. data is what a read produced: all of it on success, the bytes
// read before the failure otherwise. It goes out straight from the pooled request
// buffer, behind a header built in cn.hdr: a reply allocates and copies nothing.
// Replies go out in completion order, not request order.
//
// Without structured replies (the kernel never asks for them) this is a simple
// reply. With them, a read is one OFFSET_DATA chunk (so DF always holds), a failed
// read an OFFSET_DATA chunk for what was read and an ERROR_OFFSET chunk where it
// failed, any other failure an ERROR chunk, and any other success still a simple
// reply, which the spec allows for replies without payload.
func (cn *conn) reply(req request, errno uint32, data []byte) {
	if !cn.lock() {
		return
	}
	defer cn.unlock()
	cn.writeReply(req, errno, data)
}

// writeReply puts reply's bytes into the buffer. Caller holds the lock.
func (cn *conn) writeReply(req request, errno uint32, data []byte) {
	switch {
	case !cn.neg.structured:
		cn.simple(req.cookie, errno)
		if req.typ == cmdRead && errno == 0 {
			cn.writeData(data)
		}
	case req.typ == cmdRead && errno == 0 && len(data) == 0:
		cn.chunk(replyFlagDone, replyNone, req.cookie, 0)
		cn.w.Write(cn.hdr[:chunkSize])
	case req.typ == cmdRead && (errno == 0 || len(data) > 0):
		flags := uint16(replyFlagDone)
		if errno != 0 {
			flags = 0
		}
		p := cn.chunk(flags, replyOffsetData, req.cookie, 8+uint32(len(data)))
		binary.BigEndian.PutUint64(p, req.off)
		cn.w.Write(cn.hdr[:chunkSize+8])
		cn.writeData(data)
		if errno != 0 {
			cn.errorChunk(req, errno, req.off+uint64(len(data)))
		}
	case errno != 0:
		cn.errorChunk(req, errno, req.off)
	default:
		cn.simple(req.cookie, 0)
	}
}

// writeData writes a read's payload after its header. One larger than the room left
// in the buffer goes out from the request buffer itself once the buffer is flushed:
// otherwise bufio fills the buffer from it first, a copy of up to 64 KiB per reply
// (4 ms per MiB in a TCG guest, where a large copy is emulated a word at a time).
// Caller holds the lock; a write error sticks in cn.w.
func (cn *conn) writeData(data []byte) {
	if len(data) > cn.w.Available() && cn.w.Buffered() > 0 {
		cn.w.Flush()
	}
	cn.w.Write(data)
}

// errorChunk writes the final error chunk of a structured reply: ERROR_OFFSET at off
// for a read that failed on the device (off lies inside the request), ERROR
// otherwise. Caller holds the lock.
func (cn *conn) errorChunk(req request, errno uint32, off uint64) {
	msg := errnoText(errno)
	n := 6 + uint32(len(msg))
	typ := uint16(replyError)
	if req.typ == cmdRead && errno == errIO && off-req.off < uint64(req.length) {
		typ, n = replyErrorOffset, n+8
	}
	p := cn.chunk(replyFlagDone, typ, req.cookie, n)
	binary.BigEndian.PutUint32(p, errno)
	binary.BigEndian.PutUint16(p[4:], uint16(len(msg)))
	cn.w.Write(cn.hdr[:chunkSize+6])
	cn.w.WriteString(msg)
	if typ == replyErrorOffset {
		binary.BigEndian.PutUint64(cn.hdr[:], off)
		cn.w.Write(cn.hdr[:8])
	}
}

// errnoText is the human-readable message of an error chunk.
func errnoText(errno uint32) string {
	switch errno {
	case errPerm:
		return "read-only export"
	case errIO:
		return "I/O error on the device"
	case errInval:
		return "invalid request"
	}
	return ""
}
