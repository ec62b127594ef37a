// Package sockio reads and writes a connected socket's data path with raw system
// calls, as the Go runtime's poller would but without telling the scheduler.
//
// A Go system call that runs longer than 20 µs loses its P to sysmon, which then
// wakes every 20 µs while that keeps happening, and the thread must win a P back
// when the call returns. Under emulation (TCG) nearly every call on the data path
// (a 256 KiB read, a 1 MiB write) runs that long, and the daemon's threads switched
// ~120 times per MiB read. The sockets are non-blocking, so a raw call never sleeps
// in the kernel: it moves what it can or fails with EAGAIN, and waiting for the
// socket stays with the runtime's poller (deadlines apply).
package sockio

import (
	"io"
	"net"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is the raw side of a net.Conn. Read, Write and Writev allocate nothing: the
// callbacks the runtime's RawConn runs are bound once, and each takes its arguments
// from the Conn, under a lock of its own (a Conn normally has one reader and one
// writer, so the locks are never contended).
type Conn struct {
	rc syscall.RawConn
	rd rawOp // Read's
	wr rawOp // Write's and Writev's
}

// rawOp is one direction's call in progress.
type rawOp struct {
	mu      sync.Mutex
	buf     []byte
	bufs    [][]byte
	iov     []unix.Iovec
	n       int64
	err     error
	fn, vfn func(fd uintptr) bool
}

// New returns c's raw side, or nil if c is not a socket of this process.
func New(c net.Conn) *Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	k := &Conn{rc: rc}
	k.rd.fn, k.wr.fn, k.wr.vfn = k.readFD, k.writeFD, k.writevFD
	return k
}

// RawConn is the socket, for callers with system calls of their own (splice).
func (c *Conn) RawConn() syscall.RawConn { return c.rc }

func rawRW(trap, fd uintptr, b []byte) (int, unix.Errno) {
	if len(b) == 0 {
		return 0, 0
	}
	n, _, e := unix.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(n), e
}

// Read reads what is there, at least one byte, as net.Conn.Read does.
func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	op := &c.rd
	op.mu.Lock()
	defer op.mu.Unlock()
	op.buf, op.n, op.err = b, 0, nil
	n, err := op.result(c.rc.Read(op.fn))
	return int(n), err
}

// result is the call's outcome, the runtime's error first; it drops the call's
// arguments, so no buffer stays referenced.
func (op *rawOp) result(err error) (int64, error) {
	n, opErr := op.n, op.err
	clear(op.iov[:cap(op.iov)])
	op.buf, op.bufs, op.iov, op.err = nil, nil, op.iov[:0], nil
	if err != nil {
		return n, err
	}
	return n, opErr
}

func (c *Conn) readFD(fd uintptr) bool {
	op := &c.rd
	for {
		m, e := rawRW(unix.SYS_READ, fd, op.buf)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return false
		case e != 0:
			op.err = e
		case m == 0:
			op.err = io.EOF
		default:
			op.n = int64(m)
		}
		return true
	}
}

// Write writes all of b.
func (c *Conn) Write(b []byte) (int, error) {
	op := &c.wr
	op.mu.Lock()
	defer op.mu.Unlock()
	op.buf, op.n, op.err = b, 0, nil
	n, err := op.result(c.rc.Write(op.fn))
	return int(n), err
}

func (c *Conn) writeFD(fd uintptr) bool {
	op := &c.wr
	for int(op.n) < len(op.buf) {
		m, e := rawRW(unix.SYS_WRITE, fd, op.buf[op.n:])
		switch {
		case m > 0 && e == 0:
			op.n += int64(m)
		case e == unix.EINTR:
		case e == unix.EAGAIN:
			return false
		default:
			op.err = e
			return true
		}
	}
	return true
}

// Writev writes every byte of bufs, in order, with as few calls as it can. bufs is
// consumed.
func (c *Conn) Writev(bufs [][]byte) (int64, error) {
	op := &c.wr
	op.mu.Lock()
	defer op.mu.Unlock()
	op.bufs, op.n, op.err = bufs, 0, nil
	return op.result(c.rc.Write(op.vfn))
}

func (c *Conn) writevFD(fd uintptr) bool {
	op := &c.wr
	for {
		op.iov = op.iov[:0]
		for _, b := range op.bufs {
			if len(b) > 0 {
				op.iov = append(op.iov, unix.Iovec{Base: &b[0], Len: uint64(len(b))})
			}
		}
		if len(op.iov) == 0 {
			return true
		}
		m, _, e := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&op.iov[0])), uintptr(len(op.iov)))
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return false
		case e != 0:
			op.err = e
			return true
		}
		op.n += int64(m)
		for n := int(m); n > 0 && len(op.bufs) > 0; {
			k := min(n, len(op.bufs[0]))
			op.bufs[0], n = op.bufs[0][k:], n-k
			if len(op.bufs[0]) == 0 {
				op.bufs = op.bufs[1:]
			}
		}
		for len(op.bufs) > 0 && len(op.bufs[0]) == 0 {
			op.bufs = op.bufs[1:]
		}
	}
}
