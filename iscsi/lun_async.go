package iscsi

import "github.com/isboot/isboot/iscsi/pipebuf"

// ReadAtAsync starts reading len(p) bytes at off and returns; done runs once with the
// outcome, possibly on the session's reader goroutine, so it must not block for long.
// It is ReadAt for a caller that serves many requests from one goroutine (the NBD
// server): no goroutine and no wake-up per command. A request longer than one
// command's maximum transfer runs ReadAt on a goroutine of its own.
func (l *LUN) ReadAtAsync(p []byte, off int64, done func(n int, err error)) {
	l.transferAsync(p, off, false, false, done)
}

// WriteAtAsync is WriteAt (fua: WriteAtFUA) in the manner of ReadAtAsync.
func (l *LUN) WriteAtAsync(p []byte, off int64, fua bool, done func(n int, err error)) {
	l.transferAsync(p, off, true, fua, done)
}

func (l *LUN) transferAsync(p []byte, off int64, write, fua bool, done func(int, error)) {
	if write && l.readOnly {
		done(0, ErrReadOnly)
		return
	}
	lba, err := l.check(len(p), off)
	if err != nil {
		done(0, err)
		return
	}
	if len(p) > l.maxXfer {
		go func() { done(l.transfer(p, off, write, fua)) }()
		return
	}
	op := "READ"
	if write {
		op = "WRITE"
	}
	l.s.execAsync(op, cdbRW(write, fua, lba, uint32(len(p)/l.blockSize)), !write, p, done)
}

// ReadAtPipe is ReadAtAsync for n bytes that go into pipe instead of memory: the
// connection's reader splices them there from the socket, so a server can splice them
// on to its client without ever copying them (see iscsi/pipebuf). done runs as for
// ReadAtAsync; on success pipe holds exactly n bytes, on failure the caller empties it.
// It reports false, and does nothing, for a read above one command's maximum
// transfer. (Where the bytes must be seen, for a data digest, they are copied in.)
func (l *LUN) ReadAtPipe(pipe *pipebuf.Pipe, n int, off int64, done func(n int, err error)) bool {
	if n > l.maxXfer {
		return false
	}
	lba, err := l.check(n, off)
	if err != nil {
		done(0, err)
		return true
	}
	l.s.execAsyncTo("READ", cdbRW(false, false, lba, uint32(n/l.blockSize)), true, nil, pipe, n, done)
	return true
}
