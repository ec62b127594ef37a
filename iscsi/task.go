package iscsi

import (
	"sync/atomic"
	"time"

	"github.com/isboot/isboot/iscsi/pipebuf"
)

// task is one SCSI command slot. Slots are allocated once per session (queue depth
// plus one for internal commands) and reused: issuing I/O does not allocate.
type task struct {
	slot int
	itt  uint32
	seq  uint64 // submission order; commands are reissued in this order
	cdb  cdb
	read bool
	buf  []byte // Data-In destination or Data-Out source
	// pipe, when set, is a read's destination instead of buf: its data stays in the
	// kernel (see ReadAtPipe).
	pipe     *pipebuf.Pipe
	size     int // bytes to move: len(buf), or what goes to pipe
	internal bool

	// Per attempt, written by the connection goroutines.
	gen      uint64       // connection generation the command was last sent on
	sentAt   atomic.Int64 // unix nanoseconds; 0 until sent on the current connection
	cmdSN    uint32
	received int
	aborting atomic.Bool

	// Outcome.
	response byte
	status   byte
	resid    int64 // positive: underflow, negative: overflow
	sense    [96]byte
	senseLen int
	err      error // set when the session gave up on this command

	done chan struct{} // buffered 1: completion signal

	// Set for execAsync: called instead of signalling done, with the retry state
	// execSlot keeps on its stack.
	onDone  func(n int, err error)
	op      string
	attempt int
	backoff time.Duration
}

func (t *task) prepare(c cdb, read bool, buf []byte) {
	t.cdb, t.read, t.buf, t.pipe, t.size = c, read, buf, nil, len(buf)
	t.reset()
	t.err = nil
}

// reset clears per-attempt state before (re)sending.
func (t *task) reset() {
	t.received, t.response, t.status, t.resid, t.senseLen = 0, 0, 0, 0, 0
	t.aborting.Store(false)
	t.sentAt.Store(0)
}

func (t *task) writeLen() int {
	if t.read {
		return 0
	}
	return t.size
}

func nanotime() int64 { return time.Now().UnixNano() }
