package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/isboot/isboot/internal/blockdev"
)

// Options bound what one Server may hold in memory and in flight.
type Options struct {
	// ExportName is what NBD_OPT_LIST advertises. Clients may ask for it or for "".
	ExportName  string
	Description string
	// MaxRequest is the largest READ/WRITE payload accepted (default 32 MiB, the
	// kernel's largest nbd request). Larger reads fail with EINVAL; a larger write
	// closes the connection, since its payload cannot be buffered.
	MaxRequest int
	// QueueDepth is the number of requests in flight per connection (default 128).
	QueueDepth int
	// MaxBufferBytes bounds the payload bytes held by requests in flight over all
	// connections (default 64 MiB); the reader waits for room before reading more.
	// As much again may stay pooled for reuse.
	MaxBufferBytes int64
	// ReplyTimeout is how long a network client may leave replies unread before it is
	// disconnected (default 30 s; between half of it and all of it, as the deadline
	// is moved lazily): its requests hold buffers that other clients of the export
	// need. The kernel's sockets have none.
	ReplyTimeout time.Duration
	// SpliceMin is the smallest read whose bytes go from the device to the client
	// through a kernel pipe, never copied into the process, when the device can
	// (blockdev.PipeReader) and the client is a socket (default 64 KiB; negative:
	// never). Smaller reads gain less than the extra system calls cost.
	SpliceMin int
	// Logf receives backend failures and protocol errors (default log.Printf).
	Logf func(format string, args ...any)
	// Depth, when set, hears how many requests are in flight over all connections
	// each time a connection's reader takes one in (itself included), before the
	// request starts: for a server that follows the client's queue (the daemon's
	// priority, queuePriority). It runs on the reader and must be quick.
	Depth func(inFlight int)
}

// Stats are cumulative counters over all connections.
type Stats struct {
	Commands, ReadBytes, WriteBytes, Errors uint64
	// SplicedBytes are the read bytes that went to the client through a pipe.
	SplicedBytes uint64
	// ZeroWrites are writes of zeroes sent to the device as WriteZeroes.
	ZeroWrites uint64
	// MergedReads are the reads answered from a read merged with the one before it:
	// device commands saved.
	MergedReads uint64
}

// Server exports one blockdev.Device. It is safe to serve many connections at once;
// the device is shared, so a flush on any connection covers writes completed on all of
// them (which is what CAN_MULTI_CONN promises).
type Server struct {
	dev    blockdev.Device
	opts   Options
	bufs   *bufPool
	budget *semaphore.Weighted
	// rmw serialises read-modify-write cycles for unaligned writes, so two of them
	// touching the same block cannot lose each other's bytes.
	rmw sync.Mutex
	// inFlight counts the requests that hold a connection's slot, over all of them.
	inFlight atomic.Int32

	commands, readBytes, writeBytes, errs, spliced, zeroWrites, mergedReads atomic.Uint64
}

// NewServer returns a server for dev.
func NewServer(dev blockdev.Device, opts Options) *Server {
	if opts.MaxRequest <= 0 {
		opts.MaxRequest = 32 << 20
	}
	if opts.QueueDepth <= 0 {
		opts.QueueDepth = 128
	}
	if opts.ReplyTimeout <= 0 {
		opts.ReplyTimeout = 30 * time.Second
	}
	if opts.MaxBufferBytes < int64(opts.MaxRequest) {
		opts.MaxBufferBytes = max(64<<20, int64(opts.MaxRequest))
	}
	if opts.Logf == nil {
		opts.Logf = log.Printf
	}
	if opts.SpliceMin == 0 {
		opts.SpliceMin = 64 << 10
	}
	return &Server{
		dev:    dev,
		opts:   opts,
		bufs:   newBufPool(opts.MaxRequest, opts.MaxBufferBytes),
		budget: semaphore.NewWeighted(opts.MaxBufferBytes),
	}
}

// Device is the device the server exports.
func (s *Server) Device() blockdev.Device { return s.dev }

// Stats returns the counters so far.
func (s *Server) Stats() Stats {
	return Stats{s.commands.Load(), s.readBytes.Load(), s.writeBytes.Load(), s.errs.Load(), s.spliced.Load(), s.zeroWrites.Load(), s.mergedReads.Load()}
}

// TransmissionFlags are the flags the server offers for its device, both in the
// handshake and (for the kernel) as NBD_ATTR_SERVER_FLAGS.
func (s *Server) TransmissionFlags() uint16 {
	f := uint16(FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim |
		FlagSendWriteZeroes | FlagCanMultiConn)
	if s.dev.ReadOnly() {
		f |= FlagReadOnly
	}
	return f
}

// Serve accepts connections on l until ctx is done or l fails, serving each (handshake,
// then transmission) in its own goroutine. It closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("nbd: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ServeConn(ctx, c); err != nil {
				s.opts.Logf("nbd: %s: %v", c.RemoteAddr(), err)
			}
		}()
	}
}

// ServeConn runs the fixed newstyle handshake on c and then serves requests until the
// client disconnects or ctx is done. It closes c.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	src := &source{Reader: c}
	br := bufio.NewReaderSize(src, 64<<10)
	neg, transmit, err := s.handshake(br, c)
	if ctx.Err() != nil {
		return nil
	}
	if err != nil || !transmit {
		return err
	}
	c.SetDeadline(time.Time{})
	return s.transmit(ctx, c, src, br, neg)
}

// ServeTransmission serves requests on c, which is already in the transmission phase
// (a socket handed to the kernel, which does no handshake: simple replies only). It
// closes c.
func (s *Server) ServeTransmission(ctx context.Context, c net.Conn) error {
	defer c.Close()
	src := &source{Reader: c}
	return s.transmit(ctx, c, src, bufio.NewReaderSize(src, 64<<10), negotiated{kernel: true})
}

// errClientAbort ends a handshake without transmission and without complaint.
var errClientAbort = errors.New("client aborted")
