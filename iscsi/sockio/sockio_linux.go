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
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is the raw side of a net.Conn.
type Conn struct {
	rc  syscall.RawConn
	iov []unix.Iovec // Writev's, reused: a Conn has one writer at a time
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
	return &Conn{rc: rc}
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
	var n int
	var opErr error
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			m, e := rawRW(unix.SYS_READ, fd, b)
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				return false
			case e != 0:
				opErr = e
			case m == 0:
				opErr = io.EOF
			default:
				n = m
			}
			return true
		}
	})
	if err != nil {
		return n, err
	}
	return n, opErr
}

// Write writes all of b.
func (c *Conn) Write(b []byte) (int, error) {
	done := 0
	var opErr error
	err := c.rc.Write(func(fd uintptr) bool {
		for done < len(b) {
			m, e := rawRW(unix.SYS_WRITE, fd, b[done:])
			switch {
			case m > 0 && e == 0:
				done += m
			case e == unix.EINTR:
			case e == unix.EAGAIN:
				return false
			default:
				opErr = e
				return true
			}
		}
		return true
	})
	if err != nil {
		return done, err
	}
	return done, opErr
}

// Writev writes every byte of bufs, in order, with as few calls as it can. bufs is
// consumed.
func (c *Conn) Writev(bufs [][]byte) (int64, error) {
	var total int64
	iov := c.iov[:0]
	defer func() { clear(iov[:cap(iov)]); c.iov = iov[:0] }() // keep no buffer alive
	var opErr error
	err := c.rc.Write(func(fd uintptr) bool {
		for {
			iov = iov[:0]
			for _, b := range bufs {
				if len(b) > 0 {
					iov = append(iov, unix.Iovec{Base: &b[0], Len: uint64(len(b))})
				}
			}
			if len(iov) == 0 {
				return true
			}
			m, _, e := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				return false
			case e != 0:
				opErr = e
				return true
			}
			total += int64(m)
			for n := int(m); n > 0 && len(bufs) > 0; {
				k := min(n, len(bufs[0]))
				bufs[0], n = bufs[0][k:], n-k
				if len(bufs[0]) == 0 {
					bufs = bufs[1:]
				}
			}
			for len(bufs) > 0 && len(bufs[0]) == 0 {
				bufs = bufs[1:]
			}
		}
	})
	if err != nil {
		return total, err
	}
	return total, opErr
}
