package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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
	// Logf receives backend failures and protocol errors (default log.Printf).
	Logf func(format string, args ...any)
}

// Stats are cumulative counters over all connections.
type Stats struct {
	Commands, ReadBytes, WriteBytes, Errors uint64
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

	commands, readBytes, writeBytes, errs atomic.Uint64
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
	return &Server{
		dev:    dev,
		opts:   opts,
		bufs:   newBufPool(opts.MaxRequest, opts.MaxBufferBytes),
		budget: semaphore.NewWeighted(opts.MaxBufferBytes),
	}
}

// Stats returns the counters so far.
func (s *Server) Stats() Stats {
	return Stats{s.commands.Load(), s.readBytes.Load(), s.writeBytes.Load(), s.errs.Load()}
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
	br := bufio.NewReaderSize(c, 64<<10)
	neg, transmit, err := s.handshake(br, c)
	if ctx.Err() != nil {
		return nil
	}
	if err != nil || !transmit {
		return err
	}
	c.SetDeadline(time.Time{})
	return s.transmit(ctx, c, br, neg)
}

// ServeTransmission serves requests on c, which is already in the transmission phase
// (a socket handed to the kernel, which does no handshake: simple replies only). It
// closes c.
func (s *Server) ServeTransmission(ctx context.Context, c net.Conn) error {
	defer c.Close()
	return s.transmit(ctx, c, bufio.NewReaderSize(c, 64<<10), negotiated{kernel: true})
}

// errClientAbort ends a handshake without transmission and without complaint.
var errClientAbort = errors.New("client aborted")

type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	off    uint64
	length uint32
}

// decodeRequest parses one request header from the (untrusted) client.
func decodeRequest(hdr *[requestSize]byte) (request, error) {
	if m := binary.BigEndian.Uint32(hdr[0:]); m != magicRequest {
		return request{}, fmt.Errorf("bad request magic %#x", m)
	}
	return request{
		flags:  binary.BigEndian.Uint16(hdr[4:]),
		typ:    binary.BigEndian.Uint16(hdr[6:]),
		cookie: binary.BigEndian.Uint64(hdr[8:]),
		off:    binary.BigEndian.Uint64(hdr[16:]),
		length: binary.BigEndian.Uint32(hdr[24:]),
	}, nil
}

// payload is the buffer a request needs: its write data or its read reply. A write
// above MaxRequest is an error (its data cannot be skipped safely); a read above it
// needs no buffer, since do rejects it with EINVAL.
func (s *Server) payload(req request) (int64, error) {
	if req.typ != cmdRead && req.typ != cmdWrite {
		return 0, nil
	}
	if int64(req.length) > int64(s.opts.MaxRequest) {
		if req.typ == cmdWrite {
			return 0, fmt.Errorf("write of %d bytes exceeds the %d-byte maximum", req.length, s.opts.MaxRequest)
		}
		return 0, nil
	}
	return int64(req.length), nil
}

type conn struct {
	s     *Server
	c     net.Conn
	r     *bufio.Reader
	neg   negotiated
	slots chan struct{}
	wg    sync.WaitGroup
	wmu   sync.Mutex
	w     *bufio.Writer // replies, guarded by wmu
	// hdr is scratch for reply headers, guarded by wmu: replies are built in place,
	// so answering a request allocates nothing.
	hdr  [chunkSize + 8]byte
	werr error // first reply write error, guarded by wmu
	// deadlineSet is when the write deadline was last moved, guarded by wmu.
	deadlineSet time.Time
	last        bool // the holder of wmu is the last reply queued: it flushes
	// waiting counts replies queued for wmu. The last writer flushes, so replies that
	// complete together leave in one system call.
	waiting atomic.Int32
	// gone is set when the peer vanished without NBD_CMD_DISC. Requests not yet
	// started are then dropped: nobody can receive their replies, and the kernel
	// resends them on another socket, where a late copy of a write could overwrite
	// newer data.
	gone atomic.Bool
	// async is the device's asynchronous path (see async.go); ops keeps its request
	// records for reuse, finished holds the completed ones for the flusher.
	async    blockdev.Async
	ops      chan *asyncOp
	kick     chan struct{} // wakes the flusher: replies wait in w or in finished
	doneMu   sync.Mutex
	finished []*asyncOp // guarded by doneMu
}

func (s *Server) transmit(ctx context.Context, c net.Conn, br *bufio.Reader, neg negotiated) error {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	cn := &conn{s: s, c: c, r: br, neg: neg, w: bufio.NewWriterSize(c, 64<<10), slots: make(chan struct{}, s.opts.QueueDepth)}
	if a, ok := s.dev.(blockdev.Async); ok {
		cn.async, cn.ops = a, make(chan *asyncOp, s.opts.QueueDepth)
		cn.kick = make(chan struct{}, 1)
		stopFlusher := cn.startFlusher()
		defer stopFlusher()
	}
	defer cn.wg.Wait()
	err := cn.readRequests(ctx)
	if err != nil || ctx.Err() != nil {
		cn.gone.Store(true)
	}
	if errors.Is(err, io.EOF) || ctx.Err() != nil {
		return nil
	}
	return err
}

// readRequests reads and dispatches requests until NBD_CMD_DISC (nil) or an error.
func (cn *conn) readRequests(ctx context.Context) error {
	s, br := cn.s, cn.r
	var hdr [requestSize]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return err
			}
			return fmt.Errorf("read request: %w", err)
		}
		req, err := decodeRequest(&hdr)
		if err != nil {
			return err
		}
		if req.typ == cmdDisc {
			return nil // deferred Wait lets requests in flight finish replying
		}
		payload, err := s.payload(req)
		if err != nil {
			return err
		}
		cn.slots <- struct{}{}
		if err := s.budget.Acquire(ctx, payload); err != nil {
			<-cn.slots
			return err
		}
		// Payload buffers come from the pool and go back to it after the reply, so
		// steady-state reads and writes allocate nothing.
		var buf []byte
		if payload > 0 {
			buf = s.bufs.get(int(payload))
		}
		if req.typ == cmdWrite {
			if _, err := io.ReadFull(br, buf); err != nil {
				cn.release(buf, payload)
				return fmt.Errorf("read write payload: %w", err)
			}
		}
		cn.wg.Add(1)
		if cn.startAsync(req, buf, payload) {
			continue
		}
		go func() {
			defer cn.wg.Done()
			defer cn.release(buf, payload)
			if cn.gone.Load() {
				return
			}
			if req.typ == cmdBlockStatus {
				cn.blockStatus(req)
				return
			}
			errno, good := s.do(req, buf, cn.neg)
			s.commands.Add(1)
			if errno != 0 {
				s.errs.Add(1)
			}
			cn.reply(req, errno, buf[:good])
		}()
	}
}

func (cn *conn) release(buf []byte, payload int64) {
	if buf != nil {
		cn.s.bufs.put(buf)
	}
	cn.s.budget.Release(payload)
	<-cn.slots
}

// lock takes the reply writer. It reports false, holding nothing, when the
// connection can no longer be written.
func (cn *conn) lock() bool {
	cn.waiting.Add(1)
	cn.wmu.Lock()
	cn.last = cn.waiting.Add(-1) == 0
	if cn.werr != nil {
		cn.wmu.Unlock()
		return false
	}
	cn.writeDeadline()
	return true
}

// writeDeadline bounds the reply writes that follow. Caller holds the lock. The
// deadline moves only once half of it has passed: setting it costs a timer update,
// which a reply need not pay.
func (cn *conn) writeDeadline() {
	if cn.neg.kernel {
		return
	}
	now := time.Now()
	if now.Sub(cn.deadlineSet) > cn.s.opts.ReplyTimeout/2 {
		cn.c.SetWriteDeadline(now.Add(cn.s.opts.ReplyTimeout))
		cn.deadlineSet = now
	}
}

// unlock releases the reply writer; the last of the replies queued for it flushes.
func (cn *conn) unlock() {
	defer cn.wmu.Unlock()
	if !cn.last {
		return // a write error sticks in cn.w and surfaces at the last writer's Flush
	}
	if cn.kick != nil {
		select { // the flusher sends what the batch of completions left
		case cn.kick <- struct{}{}:
		default:
		}
		return
	}
	if err := cn.w.Flush(); err != nil {
		cn.werr = err
		cn.c.Close() // the reader sees the error and ends the connection
	}
}

// simple writes a simple reply header. Caller holds the lock.
func (cn *conn) simple(cookie uint64, errno uint32) {
	binary.BigEndian.PutUint32(cn.hdr[0:], magicSimpleRepl)
	binary.BigEndian.PutUint32(cn.hdr[4:], errno)
	binary.BigEndian.PutUint64(cn.hdr[8:], cookie)
	cn.w.Write(cn.hdr[:replySize])
}

// chunk fills a structured reply chunk header into cn.hdr and returns the bytes
// after it, for the caller to fill the fixed part of the payload. Caller holds the
// lock.
func (cn *conn) chunk(flags, typ uint16, cookie uint64, length uint32) []byte {
	binary.BigEndian.PutUint32(cn.hdr[0:], magicStructRepl)
	binary.BigEndian.PutUint16(cn.hdr[4:], flags)
	binary.BigEndian.PutUint16(cn.hdr[6:], typ)
	binary.BigEndian.PutUint64(cn.hdr[8:], cookie)
	binary.BigEndian.PutUint32(cn.hdr[16:], length)
	return cn.hdr[chunkSize:]
}

// reply answers req. data is what a read produced: all of it on success, the bytes
// read before the failure otherwise. It goes out straight from the pooled request
// buffer, behind a header built in cn.hdr: a reply allocates and copies nothing.
// Replies go out in completion order, not request order.
//
// Without structured replies (the kernel never asks for them) this is a simple
// reply. With them, a read is one OFFSET_DATA chunk (so DF always holds), a failed
// read an OFFSET_DATA chunk for what was read and an ERROR_OFFSET chunk where it
// failed, any other failure an ERROR chunk, and any other success still a simple
// reply, which the spec allows for replies without payload.
func (cn *conn) reply(req request, errno uint32, data []byte) {
	if !cn.lock() {
		return
	}
	defer cn.unlock()
	cn.writeReply(req, errno, data)
}

// writeReply puts reply's bytes into the buffer. Caller holds the lock.
func (cn *conn) writeReply(req request, errno uint32, data []byte) {
	switch {
	case !cn.neg.structured:
		cn.simple(req.cookie, errno)
		if req.typ == cmdRead && errno == 0 {
			cn.w.Write(data) // large payloads bypass the buffer
		}
	case req.typ == cmdRead && errno == 0 && len(data) == 0:
		cn.chunk(replyFlagDone, replyNone, req.cookie, 0)
		cn.w.Write(cn.hdr[:chunkSize])
	case req.typ == cmdRead && (errno == 0 || len(data) > 0):
		flags := uint16(replyFlagDone)
		if errno != 0 {
			flags = 0
		}
		p := cn.chunk(flags, replyOffsetData, req.cookie, 8+uint32(len(data)))
		binary.BigEndian.PutUint64(p, req.off)
		cn.w.Write(cn.hdr[:chunkSize+8])
		cn.w.Write(data)
		if errno != 0 {
			cn.errorChunk(req, errno, req.off+uint64(len(data)))
		}
	case errno != 0:
		cn.errorChunk(req, errno, req.off)
	default:
		cn.simple(req.cookie, 0)
	}
}

// errorChunk writes the final error chunk of a structured reply: ERROR_OFFSET at off
// for a read that failed on the device (off lies inside the request), ERROR
// otherwise. Caller holds the lock.
func (cn *conn) errorChunk(req request, errno uint32, off uint64) {
	msg := errnoText(errno)
	n := 6 + uint32(len(msg))
	typ := uint16(replyError)
	if req.typ == cmdRead && errno == errIO && off-req.off < uint64(req.length) {
		typ, n = replyErrorOffset, n+8
	}
	p := cn.chunk(replyFlagDone, typ, req.cookie, n)
	binary.BigEndian.PutUint32(p, errno)
	binary.BigEndian.PutUint16(p[4:], uint16(len(msg)))
	cn.w.Write(cn.hdr[:chunkSize+6])
	cn.w.WriteString(msg)
	if typ == replyErrorOffset {
		binary.BigEndian.PutUint64(cn.hdr[:], off)
		cn.w.Write(cn.hdr[:8])
	}
}

// errnoText is the human-readable message of an error chunk.
func errnoText(errno uint32) string {
	switch errno {
	case errPerm:
		return "read-only export"
	case errIO:
		return "I/O error on the device"
	case errInval:
		return "invalid request"
	}
	return ""
}

// do executes one request and returns the NBD error value (0 for success) and, for a
// read, how many bytes of buf hold data.
func (s *Server) do(req request, buf []byte, neg negotiated) (errno uint32, good int) {
	known := uint16(cmdFlagFUA | cmdFlagNoHole)
	if req.typ == cmdRead && neg.structured {
		known |= cmdFlagDF
	}
	if req.flags&^known != 0 {
		return errInval, 0
	}
	size := uint64(s.dev.Size())
	off, n := req.off, uint64(req.length)
	if req.typ != cmdFlush && (off > size || n > size-off) {
		return errInval, 0
	}
	fua := req.flags&cmdFlagFUA != 0
	var err error
	switch req.typ {
	case cmdRead:
		if n > uint64(s.opts.MaxRequest) {
			return errInval, 0
		}
		good, err = s.read(buf, int64(off))
		if err == nil {
			s.readBytes.Add(n)
		}
	case cmdWrite, cmdTrim, cmdWriteZeroes:
		if s.dev.ReadOnly() {
			return errPerm, 0
		}
		switch req.typ {
		case cmdWrite:
			err = s.write(buf, int64(off), fua)
			if err == nil {
				s.writeBytes.Add(n)
			}
		case cmdTrim:
			err = s.trim(int64(off), int64(n))
		default:
			// NO_HOLE needs nothing extra: WriteZeroes never promises to deallocate.
			err = s.writeZeroes(int64(off), int64(n))
		}
		if err == nil && fua && req.typ != cmdWrite {
			err = s.dev.Flush()
		}
	case cmdFlush:
		err = s.dev.Flush()
	default:
		return errInval, 0
	}
	errno = s.errno(req, err)
	if errno == 0 {
		good = len(buf)
	}
	return errno, good
}

var cmdNames = map[uint16]string{cmdRead: "read", cmdWrite: "write", cmdFlush: "flush",
	cmdTrim: "trim", cmdWriteZeroes: "write-zeroes", cmdBlockStatus: "block-status"}

func (s *Server) errno(req request, err error) uint32 {
	switch {
	case err == nil:
		return 0
	case blockdev.IsOutOfRange(err):
		return errInval
	case blockdev.IsReadOnly(err):
		return errPerm
	}
	s.opts.Logf("nbd: %s at %d+%d: %v", cmdNames[req.typ], req.off, req.length, err)
	return errIO
}
