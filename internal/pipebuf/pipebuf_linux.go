// Package pipebuf holds bytes in kernel pipes, so a read can move from one socket to
// another with splice(2) and never be copied into the process.
//
// Under emulation (TCG) every copy of a block costs about as much as the network: a
// read that goes target socket → process → NBD socket → bio is copied three times,
// while the kernel's own initiator copies it once. Spliced, the target's socket
// buffers are only referenced by the pipe and then by the NBD socket, and the one
// copy left is the NBD driver's into the bio.
//
// A pipe holds a bounded number of buffers (one per socket buffer fragment, often
// ~1.4 KiB under a virtual NIC), so a Pipe chains as many kernel pipes as the data
// needs. A Pipe has one user at a time.
package pipebuf

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pipeSize is what each kernel pipe is asked to hold: 256 buffers. A privileged
// process may go beyond fs.pipe-max-size; others get what the kernel allows.
const pipeSize = 1 << 20

type segment struct {
	r, w int // pipe ends, both non-blocking
	n    int // bytes held
}

// Pipe is a chain of kernel pipes holding bytes in order.
type Pipe struct {
	segs []segment
	fill int // the segment being filled
	n    int
}

// Len is the number of bytes held.
func (p *Pipe) Len() int { return p.n }

// Supported reports whether this kernel can splice a socket into a pipe and out.
func Supported() bool {
	var p Pipe
	defer p.Close()
	_, err := p.seg()
	return err == nil
}

// seg returns the segment being filled, opening it if needed.
func (p *Pipe) seg() (*segment, error) {
	for p.fill >= len(p.segs) {
		var fds [2]int
		if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
			return nil, fmt.Errorf("pipebuf: pipe: %w", err)
		}
		// Best effort: a smaller pipe only means a longer chain.
		unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, pipeSize)
		p.segs = append(p.segs, segment{r: fds[0], w: fds[1]})
	}
	return &p.segs[p.fill], nil
}

// full reports whether s has no room for another buffer.
func full(s *segment) bool {
	fds := []unix.PollFd{{Fd: int32(s.w), Events: unix.POLLOUT}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n == 0
}

// Write copies b into the pipe (bytes already read into memory, ahead of a splice).
func (p *Pipe) Write(b []byte) error {
	for len(b) > 0 {
		s, err := p.seg()
		if err != nil {
			return err
		}
		n, err := unix.Write(s.w, b)
		if n > 0 {
			s.n, p.n, b = s.n+n, p.n+n, b[n:]
			continue
		}
		if err == unix.EAGAIN || err == nil {
			p.fill++ // full: chain another pipe
			continue
		}
		return fmt.Errorf("pipebuf: write: %w", err)
	}
	return nil
}

// ErrShort is returned when the socket reached end of file before n bytes came.
var ErrShort = errors.New("pipebuf: connection closed in the middle of a data segment")

// Lowat keeps a TCP socket's SO_RCVLOWAT: a reader that knows how many bytes it
// needs is woken once they are all there, not for every segment that arrives (each
// wake-up is a context switch and a system call; under emulation, hundreds per MiB).
// The mark must never exceed what is sure to come, or the reader sleeps forever: set
// it to the bytes still missing before every wait, and back to 1 when done.
type Lowat struct{ cur int }

// lowatMax bounds the mark; the kernel also caps it at half the receive buffer.
const lowatMax = 256 << 10

// Set makes the socket readable once n bytes are queued. Failures are ignored: the
// reader is then only woken more often.
func (l *Lowat) Set(fd uintptr, n int) {
	n = max(1, min(n, lowatMax))
	if n == l.cur || n == 1 && l.cur == 0 {
		return
	}
	// A raw system call: through the scheduler's syscall path, the first one after
	// the process went idle wakes sysmon (see package rawsock), and iscsi's read
	// coalescing sets the mark here before most of its waits.
	v := int32(n)
	if _, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT,
		uintptr(unsafe.Pointer(&v)), 4, 0); e == 0 {
		l.cur = n
	}
}

// ReadFull reads len(b) bytes from the socket behind rc, waiting as a read would
// (deadlines apply) but woken only when what is missing has arrived (l may be nil).
func ReadFull(rc syscall.RawConn, b []byte, l *Lowat) error {
	var opErr error
	err := rc.Read(func(fd uintptr) bool {
		for len(b) > 0 {
			n, err := unix.Read(int(fd), b)
			switch {
			case n > 0:
				b = b[n:]
			case err == unix.EINTR:
			case err == unix.EAGAIN:
				if l != nil {
					l.Set(fd, len(b))
				}
				return false
			case err != nil:
				opErr = err
				return true
			default:
				opErr = io.ErrUnexpectedEOF
				return true
			}
		}
		if l != nil {
			l.Set(fd, 1)
		}
		return true
	})
	if err != nil {
		return err
	}
	return opErr
}

// SpliceFrom moves exactly n bytes from the socket behind rc into the pipe, waiting
// for them as a read would (deadlines apply), woken as ReadFull is (l may be nil).
func (p *Pipe) SpliceFrom(rc syscall.RawConn, n int, l *Lowat) error {
	var opErr error
	for n > 0 {
		s, err := p.seg()
		if err != nil {
			return err
		}
		err = rc.Read(func(fd uintptr) bool {
			for n > 0 {
				m, err := unix.Splice(int(fd), nil, s.w, nil, n, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
				switch {
				case m > 0:
					s.n, p.n, n = s.n+int(m), p.n+int(m), n-int(m)
				case err == unix.EINTR:
				case err == unix.EAGAIN:
					if full(s) {
						p.fill++ // the next segment takes the rest
						return true
					}
					if l != nil {
						l.Set(fd, n)
					}
					return false // the socket is empty: wait for it
				case err != nil:
					opErr = fmt.Errorf("pipebuf: splice from socket: %w", err)
					return true
				default:
					opErr = ErrShort
					return true
				}
			}
			if l != nil {
				l.Set(fd, 1)
			}
			return true
		})
		if err != nil {
			return err
		}
		if opErr != nil {
			return opErr
		}
	}
	return nil
}

// SpliceTo moves every byte held to the socket behind rc, in order, waiting for room
// as a write would (deadlines apply). The pipe is empty afterwards, also on error.
func (p *Pipe) SpliceTo(rc syscall.RawConn) error {
	defer p.Reset()
	for i := range p.segs {
		s := &p.segs[i]
		if s.n == 0 {
			continue
		}
		flags := unix.SPLICE_F_NONBLOCK | unix.SPLICE_F_MOVE
		if p.n > s.n {
			flags |= unix.SPLICE_F_MORE
		}
		var opErr error
		err := rc.Write(func(fd uintptr) bool {
			for s.n > 0 {
				m, err := unix.Splice(s.r, nil, int(fd), nil, s.n, flags)
				switch {
				case m > 0:
					s.n, p.n = s.n-int(m), p.n-int(m)
				case err == unix.EINTR:
				case err == unix.EAGAIN:
					return false // the socket is full: wait for room
				case err != nil:
					opErr = fmt.Errorf("pipebuf: splice to socket: %w", err)
					return true
				default:
					opErr = errors.New("pipebuf: splice to socket moved nothing")
					return true
				}
			}
			return true
		})
		if err != nil {
			return err
		}
		if opErr != nil {
			return opErr
		}
	}
	return nil
}

// Read copies held bytes into b, as a pipe read: for callers that need them in memory.
func (p *Pipe) Read(b []byte) (int, error) {
	got := 0
	for i := range p.segs {
		s := &p.segs[i]
		for s.n > 0 && got < len(b) {
			n, err := unix.Read(s.r, b[got:min(len(b), got+s.n)])
			if n <= 0 {
				return got, fmt.Errorf("pipebuf: read: %w", err)
			}
			s.n, p.n, got = s.n-n, p.n-n, got+n
		}
	}
	if p.n == 0 {
		p.fill = 0
	}
	return got, nil
}

// Reset drops every byte held. Segments still holding bytes are closed (which frees
// them at once) and reopened when next needed.
func (p *Pipe) Reset() {
	keep := p.segs[:0]
	for _, s := range p.segs {
		if s.n == 0 {
			keep = append(keep, s)
			continue
		}
		unix.Close(s.r)
		unix.Close(s.w)
	}
	clear(p.segs[len(keep):])
	p.segs, p.fill, p.n = keep, 0, 0
}

// Close releases the kernel pipes.
func (p *Pipe) Close() {
	for _, s := range p.segs {
		unix.Close(s.r)
		unix.Close(s.w)
	}
	p.segs, p.fill, p.n = nil, 0, 0
}

// ToUnixCheap reports whether splicing into an AF_UNIX socket costs less than
// copying. Before Linux 6.5 every pipe buffer became its own sendpage call, each
// waking the reader: spliced from a 1500-byte-MTU socket, ~700 wake-ups per MiB,
// where a write wakes it ~30 times. Since 6.5 (MSG_SPLICE_PAGES) a splice is one
// sendmsg.
var ToUnixCheap = sync.OnceValue(func() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	var major, minor int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor)
	return major > 6 || major == 6 && minor >= 5
})
