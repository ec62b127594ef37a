package iscsi

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
