package blockdev

import "github.com/isboot/isboot/iscsi/pipebuf"

// Async is a Device that can start a read or write and return at once. done runs
// exactly once with the outcome, possibly on the device's own goroutine (the iSCSI
// connection's reader), so it must not block for long. A server uses it to answer
// many requests from one goroutine without a goroutine per request.
type Async interface {
	ReadAtAsync(p []byte, off int64, done func(n int, err error))
	WriteAtAsync(p []byte, off int64, fua bool, done func(n int, err error))
}

// PipeReader is an Async device that can also leave a read's bytes in a kernel pipe
// (iscsi.LUN.ReadAtPipe), for a server to splice to its client uncopied. ReadAtPipe
// reports false, having done nothing, when it cannot take this read.
type PipeReader interface {
	ReadAtPipe(pipe *pipebuf.Pipe, n int, off int64, done func(n int, err error)) bool
}

// Exchanger is an Async device whose read can answer with a buffer of its own instead
// of copying into the caller's: done gets q, which holds the bytes, has p's length and
// capacity, and is the caller's from then on; p is then the device's. q is p itself when
// the device had nothing to exchange. A read ahead served this way costs no copy.
type Exchanger interface {
	ReadAtAsyncExchange(p []byte, off int64, done func(q []byte, err error))
}
