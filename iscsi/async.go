package iscsi

import (
	"fmt"
	"time"

	"github.com/isboot/isboot/iscsi/pipebuf"
)

// The asynchronous path serves callers that cannot afford a goroutine and two
// wake-ups per command (the NBD server attached to the kernel): the command is sent
// from the caller's goroutine when the connection is idle, and its completion runs
// on the connection's reader, which has just read the response.

// execAsync starts one command and returns once it is sent or queued; done runs
// exactly once when it finished, after the retries SCSI asks for. It moves whole
// buffers (READ and WRITE): a read that returns less than len(buf) fails. done may run on the
// connection's reader goroutine: it must not block for long or start I/O on s and
// wait for it. execAsync blocks only while every task slot is busy.
func (s *Session) execAsync(op string, cd cdb, read bool, buf []byte, done func(n int, err error)) {
	s.execAsyncTo(op, cd, read, buf, nil, len(buf), done)
}

// execAsyncTo is execAsync for a read into pipe (size bytes) when pipe is set.
func (s *Session) execAsyncTo(op string, cd cdb, read bool, buf []byte, pipe *pipebuf.Pipe, size int, done func(n int, err error)) {
	var slot int
	select {
	case slot = <-s.free:
	case <-s.closing:
		done(0, ErrClosed)
		return
	}
	t := &s.tasks[slot]
	t.onDone, t.op, t.attempt, t.backoff = done, op, 0, time.Millisecond
	t.prepare(cd, read, buf)
	t.pipe, t.size = pipe, size
	s.submit(t)
}

// submit registers t and sends it, directly or through the writer.
func (s *Session) submit(t *task) {
	c, err := s.register(t)
	if err != nil {
		s.finishAsync(t, 0, err)
		return
	}
	if ref := (taskRef{t, t.seq}); c == nil || !c.sendDirect(ref, true) {
		select {
		case s.cmdCh <- ref:
		case <-s.failedCh: // failAll completes t
		}
	}
}

// asyncDone handles an async command's outcome: retry it, or report it.
func (s *Session) asyncDone(t *task) {
	err := t.result(t.op)
	if n := t.transferred(); err == nil && t.read && n != t.size {
		err = fmt.Errorf("iscsi: %s returned %d of %d bytes", t.op, n, t.size)
	}
	if err == nil && t.pipe != nil && t.pipe.Len() != t.size {
		err = fmt.Errorf("iscsi: %s delivered %d of %d bytes", t.op, t.pipe.Len(), t.size)
	}
	if err == nil {
		s.finishAsync(t, t.size, nil)
		return
	}
	s.noteError(err)
	retry, wait := retryable(err, t.attempt, &t.backoff)
	if !retry {
		s.finishAsync(t, 0, err)
		return
	}
	t.attempt++
	t.reset() // a pipe is emptied by the reader when the data comes again
	t.err = nil
	// Never from the reader: sending may wait for the writer, and the writer may be
	// waiting for the target to drain responses that only the reader takes.
	time.AfterFunc(wait, func() { s.submit(t) })
}

func (s *Session) finishAsync(t *task, n int, err error) {
	done, read, size := t.onDone, t.read, t.size
	t.onDone = nil
	s.free <- t.slot // t may be reused from here on
	s.account(read, n, size, err)
	done(n, err)
}
