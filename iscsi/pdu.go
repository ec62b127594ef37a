package iscsi

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/isboot/isboot/iscsi/pipebuf"
	"github.com/isboot/isboot/iscsi/sockio"
)

// Opcodes (RFC 7143 §11.2.1.2). Initiator opcodes first, then target opcodes.
const (
	opNOPOut      = 0x00
	opSCSICmd     = 0x01
	opTMFReq      = 0x02
	opLoginReq    = 0x03
	opTextReq     = 0x04
	opDataOut     = 0x05
	opLogoutReq   = 0x06
	opNOPIn       = 0x20
	opSCSIResp    = 0x21
	opTMFResp     = 0x22
	opLoginResp   = 0x23
	opTextResp    = 0x24
	opDataIn      = 0x25
	opLogoutResp  = 0x26
	opR2T         = 0x31
	opAsyncMsg    = 0x32
	opReject      = 0x3f
	flagImmediate = 0x40
	flagFinal     = 0x80
	reservedTag   = 0xffffffff
	bhsLen        = 48
	// maxAHSLen bounds the additional header segments we accept; targets send none
	// to an initiator in practice, and the field allows 1020 bytes.
	maxAHSLen = 1020
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is the iSCSI digest: CRC32C, sent little-endian on the wire (RFC 7143 §13.1).
func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

var zeroPad [4]byte

// padLen is the number of pad bytes after a segment of n bytes.
func padLen(n int) int { return (4 - n&3) & 3 }

// bhs is a Basic Header Segment. Accessors read fields in place so a PDU header is
// never decoded into a separate struct on the hot path.
type bhs [bhsLen]byte

func (h *bhs) opcode() byte       { return h[0] & 0x3f }
func (h *bhs) flags() byte        { return h[1] }
func (h *bhs) ahsLen() int        { return int(h[4]) * 4 }
func (h *bhs) dataLen() int       { return int(h[5])<<16 | int(h[6])<<8 | int(h[7]) }
func (h *bhs) u32(off int) uint32 { return binary.BigEndian.Uint32(h[off:]) }
func (h *bhs) itt() uint32        { return h.u32(16) }
func (h *bhs) ttt() uint32        { return h.u32(20) }
func (h *bhs) statSN() uint32     { return h.u32(24) }
func (h *bhs) expCmdSN() uint32   { return h.u32(28) }
func (h *bhs) maxCmdSN() uint32   { return h.u32(32) }

func (h *bhs) setU32(off int, v uint32) { binary.BigEndian.PutUint32(h[off:], v) }
func (h *bhs) setDataLen(n int) {
	h[5], h[6], h[7] = byte(n>>16), byte(n>>8), byte(n)
}

// reset zeroes the header and sets its opcode, reusing the array.
func (h *bhs) reset(op byte) {
	*h = bhs{}
	h[0] = op
}

// opName names an opcode for error messages.
func opName(op byte) string {
	switch op {
	case opNOPIn:
		return "NOP-In"
	case opSCSIResp:
		return "SCSI Response"
	case opTMFResp:
		return "Task Management Response"
	case opLoginResp:
		return "Login Response"
	case opTextResp:
		return "Text Response"
	case opDataIn:
		return "Data-In"
	case opLogoutResp:
		return "Logout Response"
	case opR2T:
		return "R2T"
	case opAsyncMsg:
		return "Async Message"
	case opReject:
		return "Reject"
	}
	return fmt.Sprintf("opcode 0x%02x", op)
}

// ProtocolError is a PDU that breaks RFC 7143; the connection is dropped and recovered.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return "iscsi: protocol error: " + e.Msg }

func protoErr(format string, args ...any) error {
	return &ProtocolError{Msg: fmt.Sprintf(format, args...)}
}

// errDigest marks a digest mismatch: at ErrorRecoveryLevel 0 the connection is dropped.
var errDigest = errors.New("iscsi: digest mismatch")

// pduReader reads PDUs from a connection. Its buffers are reused for every PDU.
type pduReader struct {
	r io.Reader
	// In the full-feature phase r is br, reading through head from the socket sock
	// (when it is one), so data segments can be read or spliced past the buffer.
	br         *bufio.Reader
	head       *headReader
	sock       *sockio.Conn
	unmark     func()            // clears a coalescing mark before a splice waits (rawsock)
	promise    func(n int)       // the next n bytes are one segment on its way (rawsock)
	waitQueued func(n int) error // waits for a segment's n bytes before a splice (rawsock)
	hdrDigest  bool
	dataDigest bool
	maxData    int // our MaxRecvDataSegmentLength: the largest segment we accept
	hdr        bhs
	ahs        [maxAHSLen + 4]byte
	trailer    [8]byte
}

// readHeader reads the BHS, AHS and header digest of the next PDU into p.hdr.
// It checks the segment length against maxData before anything is read into memory.
func (p *pduReader) readHeader() error {
	if _, err := io.ReadFull(p.r, p.hdr[:]); err != nil {
		return err
	}
	ahs := p.hdr.ahsLen()
	if ahs > maxAHSLen {
		return protoErr("%s: AHS length %d", opName(p.hdr.opcode()), ahs)
	}
	if n := p.hdr.dataLen(); n > p.maxData {
		return protoErr("%s: data segment %d bytes exceeds MaxRecvDataSegmentLength %d",
			opName(p.hdr.opcode()), n, p.maxData)
	}
	if ahs > 0 {
		if _, err := io.ReadFull(p.r, p.ahs[:ahs]); err != nil {
			return err
		}
	}
	if p.hdrDigest {
		if _, err := io.ReadFull(p.r, p.trailer[:4]); err != nil {
			return err
		}
		sum := crc32.Update(crc32c(p.hdr[:]), castagnoli, p.ahs[:ahs])
		if binary.LittleEndian.Uint32(p.trailer[:4]) != sum {
			return fmt.Errorf("%w: header of %s", errDigest, opName(p.hdr.opcode()))
		}
	}
	return nil
}

// readData reads the current PDU's data segment into dst (len(dst) == dataLen), then
// its padding and data digest.
func (p *pduReader) readData(dst []byte) error {
	if p.promise != nil {
		p.promise(len(dst) - p.br.Buffered())
	}
	if err := p.readFull(dst); err != nil {
		return err
	}
	pad := padLen(len(dst))
	n := pad
	if p.dataDigest && len(dst) > 0 {
		n += 4
	}
	if n == 0 {
		return nil
	}
	if _, err := io.ReadFull(p.r, p.trailer[:n]); err != nil {
		return err
	}
	if p.dataDigest && len(dst) > 0 {
		sum := crc32.Update(crc32c(dst), castagnoli, p.trailer[:pad])
		if binary.LittleEndian.Uint32(p.trailer[pad:n]) != sum {
			return fmt.Errorf("%w: data of %s", errDigest, opName(p.hdr.opcode()))
		}
	}
	return nil
}

// readFull fills dst from the stream. A large segment's bytes past what the buffer
// holds are read straight from the socket: through the buffer its tail would be read
// and copied twice (sockio.ReadFullPast).
func (p *pduReader) readFull(dst []byte) error {
	if p.head == nil || p.r != io.Reader(p.br) || len(dst)-p.br.Buffered() < largeSegment {
		_, err := io.ReadFull(p.r, dst)
		return err
	}
	return sockio.ReadFullPast(p.br, p.head, dst)
}

// canSplice reports whether readDataTo moves data without copying it.
func (p *pduReader) canSplice() bool { return p.sock != nil && !p.dataDigest }

// readDataTo moves the current PDU's data segment (n bytes) into pipe, then reads its
// padding. Bytes the buffer already holds are copied in; the rest is spliced from
// the socket. The next header is then read on its own, so that a data segment
// following it is not pulled into the buffer before its destination is known.
func (p *pduReader) readDataTo(pipe *pipebuf.Pipe, n int, scratch []byte) error {
	if !p.canSplice() {
		if err := p.readData(scratch[:n]); err != nil {
			return err
		}
		return pipe.Write(scratch[:n])
	}
	k := min(n, p.br.Buffered())
	if k > 0 {
		b, _ := p.br.Peek(k)
		if err := pipe.Write(b); err != nil {
			return err
		}
		p.br.Discard(k)
	}
	if n > k {
		if p.waitQueued != nil {
			if err := p.waitQueued(n - k); err != nil {
				return err
			}
		} else if p.unmark != nil {
			p.unmark()
		}
		if err := pipe.SpliceFrom(p.sock, n-k); err != nil {
			return err
		}
	}
	pad := padLen(n)
	p.headerNext(pad)
	if pad > 0 {
		if _, err := io.ReadFull(p.br, p.trailer[:pad]); err != nil {
			return err
		}
	}
	return nil
}

// largeSegment is the data segment after which the next header is read on its own.
// Reading it through the buffer would pull up to 64 KiB of the segment after it into
// memory, which then costs a second copy to its destination; a read of 48 bytes costs
// one system call, little next to a segment this size.
const largeSegment = 32 << 10

// headerNext limits the next read from the socket to pad bytes and one header.
func (p *pduReader) headerNext(pad int) {
	if p.head == nil {
		return
	}
	p.head.n = pad + bhsLen
	if p.hdrDigest {
		p.head.n += 4
	}
}

// headReader passes reads through, each at most n bytes until n bytes have gone
// (n == 0: no limit). It lets a bufio.Reader read a PDU header without reading ahead.
type headReader struct {
	r io.Reader
	n int
}

func (h *headReader) Read(b []byte) (int, error) {
	if h.n > 0 && len(b) > h.n {
		b = b[:h.n]
	}
	m, err := h.r.Read(b)
	if h.n > 0 {
		h.n = max(h.n-m, 0)
	}
	return m, err
}

// discardData reads and drops the current PDU's data segment (bounded by maxData).
func (p *pduReader) discardData(scratch []byte) error {
	n := p.hdr.dataLen()
	for n > 0 {
		c := min(n, len(scratch))
		if _, err := io.ReadFull(p.r, scratch[:c]); err != nil {
			return err
		}
		n -= c
	}
	return nil
}

// pduWriter writes PDUs. Headers and small data segments are copied into out; a
// larger data segment is not copied but gathered by reference, and flush sends
// everything queued in one write, or one writev when something is gathered. The
// buffers are reused, so sending a PDU does not allocate.
//
// A gathered segment must stay unchanged until the next flush. The callers' data are
// task buffers, and a task cannot complete before the target has seen what is queued
// for it. Whoever queues without flushing leaves the flush to the writer goroutine.
type pduWriter struct {
	w          io.Writer
	wv         interface{ Writev([][]byte) (int64, error) } // w's gathering write, if it has one
	hdrDigest  bool
	dataDigest bool
	out        []byte
	trailer    [8]byte
	// vec is what flush sends when a segment was gathered: runs of out and the
	// gathered segments, in order; out[:cut] is already in it. out never grows
	// beyond its capacity, so the runs stay valid.
	vec      [][]byte
	cut      int
	gathered int // bytes of gathered segments in vec
}

// smallData is the room flushIfFull keeps in out for the next PDU: no data segment
// larger than this is copied.
const smallData = 8 << 10

// gatherMin is the smallest data segment gathered rather than copied. Go copies
// large blocks with REP MOVSQ, which under TCG moves a word per step: 4 ms per MiB,
// and tgtd's 8 KiB MaxRecvDataSegmentLength sends every byte written that way.
const gatherMin = 1 << 10

// A flush comes once this much is gathered, or this many pieces.
const (
	maxGathered = 1 << 20
	maxVec      = 128
)

// writePDU queues header h with data segment data (may be nil). The caller flushes.
func (p *pduWriter) writePDU(h *bhs, data []byte) error {
	if p.out == nil {
		p.out = make([]byte, 0, 64<<10)
	}
	h.setDataLen(len(data))
	p.out = append(p.out, h[:]...)
	if p.hdrDigest {
		p.out = binary.LittleEndian.AppendUint32(p.out, crc32c(h[:]))
	}
	if len(data) == 0 {
		return p.flushIfFull()
	}
	pad := padLen(len(data))
	t := copy(p.trailer[:], zeroPad[:pad])
	if p.dataDigest {
		sum := crc32.Update(crc32c(data), castagnoli, zeroPad[:pad])
		binary.LittleEndian.PutUint32(p.trailer[t:], sum)
		t += 4
	}
	if len(data) < gatherMin || p.wv == nil {
		p.out = append(p.out, data...)
		p.out = append(p.out, p.trailer[:t]...)
		return p.flushIfFull()
	}
	p.vec = append(p.vec, p.out[p.cut:], data)
	p.cut = len(p.out)
	p.gathered += len(data)
	p.out = append(p.out, p.trailer[:t]...)
	if p.gathered >= maxGathered || len(p.vec)+2 > maxVec {
		return p.flush()
	}
	return p.flushIfFull()
}

func (p *pduWriter) flushIfFull() error {
	if len(p.out) > cap(p.out)-smallData-2*bhsLen {
		return p.flush()
	}
	return nil
}

// flush sends everything queued.
func (p *pduWriter) flush() error {
	if len(p.out) == 0 {
		return nil
	}
	var err error
	if len(p.vec) == 0 {
		_, err = p.w.Write(p.out)
	} else {
		if p.cut < len(p.out) {
			p.vec = append(p.vec, p.out[p.cut:])
		}
		_, err = p.wv.Writev(p.vec)
		clear(p.vec) // no reference to a caller's buffer outlives the flush
		p.vec, p.cut, p.gathered = p.vec[:0], 0, 0
	}
	p.out = p.out[:0]
	return err
}
