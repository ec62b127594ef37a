package iscsi

import (
	"sync/atomic"
	"time"
)

// Read coalescing. With many commands in flight, the target's responses arrive one
// segment at a time, and waking for each cost the initiator most of its CPU per
// I/O (a sleep, a wake-up and several system calls for one or two responses). The
// reader instead tells the kernel how many bytes to gather before waking it
// (rawsock.Coalesce, SO_RCVLOWAT): an eighth of the bytes still due, at most four
// 4 KiB responses. A burst of failed commands, which answer with less than they were
// expected to, costs at most coalesceWait, and a short queue wakes for every response
// as before. The price is latency: the responses held back are at most an eighth of
// those in flight, which a target with internal parallelism and a caller at a fixed
// queue depth could feel as up to that fraction of throughput; a target that is the
// bottleneck (tgtd here) keeps the other seven eighths queued and loses nothing.

const (
	// coalesceMin is the fewest commands in flight that make waiting for several
	// responses worthwhile: below it the target may be waiting for us.
	coalesceMin = 8
	// coalesceWait bounds a wait for bytes that do not come.
	coalesceWait = time.Millisecond
	// coalesceMax is the most the reader waits for: four 4 KiB responses.
	coalesceMax = 16 << 10
)

// inflightAcct counts what the connection's commands in flight will bring back.
type inflightAcct struct {
	commands atomic.Int64
	bytes    atomic.Int64
	// bySlot is what each task slot's current command was counted for, so that
	// completing or abandoning it subtracts exactly that once.
	bySlot []atomic.Int64
	// mark is the last lowat returned; the reader's alone.
	mark int
}

// respBytes is the least a command's response brings when it succeeds: the data
// of a read (into its buffer or its pipe) and one PDU header.
func respBytes(t *task) int64 {
	if t.read {
		return int64(t.size) + bhsLen
	}
	return bhsLen
}

// sent counts t, just sent on this connection.
func (a *inflightAcct) sent(t *task) {
	if t.slot >= len(a.bySlot) {
		return // a connection built by hand in a test
	}
	n := respBytes(t)
	if old := a.bySlot[t.slot].Swap(n); old != 0 {
		a.commands.Add(-1)
		a.bytes.Add(-old)
	}
	a.commands.Add(1)
	a.bytes.Add(n)
}

// done stops counting t: it completed, or the target forgot it (aborted).
func (a *inflightAcct) done(t *task) {
	if t.slot >= len(a.bySlot) {
		return
	}
	if old := a.bySlot[t.slot].Swap(0); old != 0 {
		a.commands.Add(-1)
		a.bytes.Add(-old)
	}
}

// lowat is how many bytes the reader waits for when the socket is empty. Large
// responses are left alone: each wake-up already brings tens of kilobytes, and a
// target that sends them in bursts with pauses (tgtd reads each from its disk first)
// would make waits run out.
func (a *inflightAcct) lowat() int {
	n, b := a.commands.Load(), a.bytes.Load()
	if n < coalesceMin || b > n*coalesceMax/2 {
		a.mark = 1
		return 1
	}
	// A mark within a quarter of the last stays: every change is a setsockopt,
	// and the commands in flight change by a few between most waits.
	if w := int(min(b/8, coalesceMax)); w < a.mark*3/4 || w > a.mark*5/4 {
		a.mark = w
	}
	return a.mark
}
