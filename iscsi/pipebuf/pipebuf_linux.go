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
	"sync"
	"syscall"

	"github.com/isboot/isboot/iscsi/sockio"
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

// SpliceFrom moves exactly n bytes from the socket sc into the pipe, waiting for
// them as a read would (deadlines apply).
func (p *Pipe) SpliceFrom(sc *sockio.Conn, n int) error {
	rc := sc.RawConn()
	var opErr error
	for n > 0 {
		s, err := p.seg()
		if err != nil {
			return err
		}
		err = rc.Read(func(fd uintptr) bool {
			for n > 0 {
				m, err := splice(fd, uintptr(s.w), n, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
				switch {
				case m > 0:
					s.n, p.n, n = s.n+int(m), p.n+int(m), n-int(m)
				case err == unix.EINTR:
				case err == unix.EAGAIN:
					if full(s) {
						p.fill++ // the next segment takes the rest
						return true
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
	return p.SpliceNTo(rc, p.n)
}

// SpliceNTo moves the first n bytes held to the socket behind rc, as SpliceTo does,
// and keeps the rest for the next call: one pipe can answer several requests in
// turn. On error the pipe is emptied.
func (p *Pipe) SpliceNTo(rc syscall.RawConn, n int) error {
	if n > p.n {
		p.Reset()
		return fmt.Errorf("pipebuf: splice of %d bytes from a pipe holding %d", n, p.n)
	}
	for i := 0; n > 0 && i < len(p.segs); i++ {
		s := &p.segs[i]
		if s.n == 0 {
			continue
		}
		want := min(s.n, n)
		flags := unix.SPLICE_F_NONBLOCK | unix.SPLICE_F_MOVE
		if n > want {
			flags |= unix.SPLICE_F_MORE
		}
		var opErr error
		err := rc.Write(func(fd uintptr) bool {
			for want > 0 {
				m, err := splice(uintptr(s.r), fd, want, flags)
				switch {
				case m > 0:
					s.n, p.n, n, want = s.n-int(m), p.n-int(m), n-int(m), want-int(m)
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
		if err == nil {
			err = opErr
		}
		if err != nil {
			p.Reset()
			return err
		}
	}
	if p.n == 0 {
		p.Reset()
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
// sendmsg. The kernel's NBD socket is never spliced into whatever this says: its
// receive worker was slower with pipes on 6.12 as well (nbd.Server.transmit).
var ToUnixCheap = sync.OnceValue(func() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	var major, minor int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor)
	return major > 6 || major == 6 && minor >= 5
})

// splice is splice(2) without telling the scheduler (see iscsi/sockio): every fd
// involved is non-blocking and SPLICE_F_NONBLOCK is set, so it never sleeps.
func splice(in, out uintptr, n int, flags int) (int64, error) {
	m, _, e := unix.RawSyscall6(unix.SYS_SPLICE, in, 0, out, 0, uintptr(n), uintptr(flags))
	if e != 0 {
		return int64(m), e
	}
	return int64(m), nil
}
