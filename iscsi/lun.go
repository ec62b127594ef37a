package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
)

// LUN is the block device behind a session. It satisfies the NBD exporter's
// block-device contract structurally: ReadAt, WriteAt, WriteAtFUA, Flush, Unmap,
// WriteZeroes, Size, BlockSize, ReadOnly, with ErrReadOnly and ErrOutOfRange wrapping
// syscall.EROFS and syscall.ERANGE as that contract asks; and Extents, the optional
// allocation query (blockdev.Extenter).
// Offsets and lengths must be multiples of BlockSize.
type LUN struct {
	s         *Session
	blockSize int
	blocks    atomic.Uint64 // Refresh changes it while I/O runs
	readOnly  bool
	maxXfer   int // bytes per READ/WRITE command
	limits    blockLimits
	unmap     bool        // UNMAP supported (VPD 0xB2 LBPU)
	writeSame atomic.Bool // WRITE SAME(16) worth trying
	// lbaStatus: GET LBA STATUS worth asking (READ CAPACITY(16) said LBPME, and the
	// target has not refused it). lbprz: unmapped blocks read as zeroes.
	lbaStatus atomic.Bool
	lbprz     bool
	zero      []byte
	inquiry   Inquiry
}

// The LUN's refusals, recognisable by errors.Is against these or the errno they wrap.
var (
	ErrReadOnly   = fmt.Errorf("iscsi: LUN is read-only: %w", syscall.EROFS)
	ErrOutOfRange = fmt.Errorf("iscsi: offset past the end of the LUN: %w", syscall.ERANGE)
)

// openLUN reads capacity, limits and write protection through the normal path.
func (s *Session) openLUN() (*LUN, error) {
	l := &LUN{s: s}
	buf := make([]byte, 512)
	// The first command after login may report UNIT ATTENTION; exec retries it.
	if _, err := s.exec("TEST UNIT READY", cdbTestUnitReady(), true, nil); err != nil {
		return nil, err
	}
	// The rest are independent: ask them all at once, so opening the LUN costs one
	// round trip to the target instead of five (at boot, each is on the critical path).
	inq, rc16 := s.query("INQUIRY", cdbInquiry(0, false, 96), 96), s.query("READ CAPACITY(16)", cdbReadCapacity16(), 32)
	b0, b2 := s.query("INQUIRY VPD 0xB0", cdbInquiry(0xb0, true, 64), 64), s.query("INQUIRY VPD 0xB2", cdbInquiry(0xb2, true, 8), 8)
	ms := s.query("MODE SENSE(6)", cdbModeSense6(), 192)
	ws := s.query("REPORT SUPPORTED OPERATION CODES", cdbReportOpcode(0x93, 20), 20)
	if b, err := inq.wait(); err != nil {
		return nil, err
	} else if len(b) < 1 {
		return nil, fmt.Errorf("iscsi: LUN %s of %s: empty INQUIRY data", s.cfg.LUNAddr, s.cfg.TargetName)
	} else if b[0]&0x1f != 0 {
		return nil, fmt.Errorf("iscsi: LUN %s of %s is not a disk (peripheral type 0x%02x)", s.cfg.LUNAddr, s.cfg.TargetName, b[0]&0x1f)
	} else {
		l.inquiry.parseStandardInquiry(b)
	}
	// VPD 0x80 and 0x83 were read at login for the identity check.
	s.mu.Lock()
	l.inquiry.Serial = printable([]byte(s.ident.serial))
	l.inquiry.ID = designatorID([]byte(s.ident.devID))
	s.mu.Unlock()
	if b, err := rc16.wait(); err == nil && len(b) >= 12 {
		l.blocks.Store(binary.BigEndian.Uint64(b[0:]) + 1)
		l.blockSize = int(binary.BigEndian.Uint32(b[8:]))
		if len(b) >= 15 {
			l.lbaStatus.Store(b[14]&0x80 != 0) // LBPME: logical block provisioning
			l.lbprz = b[14]&0x40 != 0
		}
	} else {
		if _, err := s.exec("READ CAPACITY(10)", cdbReadCapacity10(), true, buf[:8]); err != nil {
			return nil, err
		}
		l.blocks.Store(uint64(binary.BigEndian.Uint32(buf[0:])) + 1)
		l.blockSize = int(binary.BigEndian.Uint32(buf[4:]))
	}
	if l.blockSize < 512 || l.blockSize > 64<<10 || l.blockSize&(l.blockSize-1) != 0 {
		return nil, fmt.Errorf("iscsi: LUN block size %d not supported", l.blockSize)
	}
	l.maxXfer = 4 << 20
	if b, err := b0.wait(); err == nil {
		l.limits = parseBlockLimits(b)
		if mt := int(l.limits.maxTransfer) * l.blockSize; mt > 0 && mt < l.maxXfer {
			l.maxXfer = mt
		}
	}
	if b, err := b2.wait(); err == nil && len(b) >= 6 {
		l.unmap = b[5]&0x80 != 0 // LBPU
	}
	// Only trust WRITE SAME when the LUN advertises a length for it or lists it among
	// its commands: some targets (gotgt) answer GOOD and zero the wrong blocks. tgtd
	// lists it but gives no length.
	b, err := ws.wait()
	l.writeSame.Store(l.limits.maxWriteSame > 0 || err == nil && opcodeSupported(b))
	if b, err := ms.wait(); err == nil && len(b) >= 4 {
		l.readOnly = b[2]&0x80 != 0 // WP in the device-specific parameter
	}
	l.zero = make([]byte, l.blockSize)
	l.inquiry.BlockSize = l.blockSize
	return l, nil
}

// pendingCmd is a command of openLUN's running on its own goroutine.
type pendingCmd struct {
	done chan struct{}
	buf  []byte
	err  error
}

// query starts a read-type command with an alloc-byte buffer of its own.
func (s *Session) query(name string, c cdb, alloc int) *pendingCmd {
	p := &pendingCmd{done: make(chan struct{}), buf: make([]byte, alloc)}
	go func() {
		defer close(p.done)
		n, err := s.probe(name, c, p.buf)
		p.buf, p.err = p.buf[:n], err
	}()
	return p
}

// wait returns the bytes the command read.
func (p *pendingCmd) wait() ([]byte, error) {
	<-p.done
	return p.buf, p.err
}

// Inquiry describes the disk: vendor, product, revision, serial number, device
// identifier and block size, as read when the session opened the LUN.
func (l *LUN) Inquiry() Inquiry { return l.inquiry }

func (l *LUN) Size() int64    { return int64(l.blocks.Load()) * int64(l.blockSize) }
func (l *LUN) BlockSize() int { return l.blockSize }
func (l *LUN) ReadOnly() bool { return l.readOnly }

// ZeroesCheaply reports whether WriteZeroes sends WRITE SAME, not the zeroes.
func (l *LUN) ZeroesCheaply() bool { return !l.readOnly && l.writeSame.Load() }

// check validates an I/O range and returns its first LBA.
func (l *LUN) check(n int, off int64) (uint64, error) {
	bs := int64(l.blockSize)
	if off%bs != 0 || int64(n)%bs != 0 {
		return 0, fmt.Errorf("iscsi: I/O at %d length %d not aligned to %d-byte blocks", off, n, bs)
	}
	if off < 0 || off+int64(n) > l.Size() {
		return 0, ErrOutOfRange
	}
	return uint64(off / bs), nil
}

// ReadAt reads len(p) bytes at off, split by the LUN's maximum transfer length.
func (l *LUN) ReadAt(p []byte, off int64) (int, error) { return l.transfer(p, off, false, false) }

func (l *LUN) WriteAt(p []byte, off int64) (int, error)    { return l.transfer(p, off, true, false) }
func (l *LUN) WriteAtFUA(p []byte, off int64) (int, error) { return l.transfer(p, off, true, true) }

// transfer runs READ or WRITE commands over p, one per maximum transfer length.
func (l *LUN) transfer(p []byte, off int64, write, fua bool) (int, error) {
	if write && l.readOnly {
		return 0, ErrReadOnly
	}
	lba, err := l.check(len(p), off)
	if err != nil {
		return 0, err
	}
	op := "READ"
	if write {
		op = "WRITE"
	}
	done := 0
	for done < len(p) {
		c := min(len(p)-done, l.maxXfer)
		blocks := uint32(c / l.blockSize)
		n, err := l.s.exec(op, cdbRW(write, fua, lba, blocks), !write, p[done:done+c])
		if err != nil {
			return done, err
		}
		if !write && n != c {
			return done + n, fmt.Errorf("iscsi: READ at LBA %d returned %d of %d bytes", lba, n, c)
		}
		done += c
		lba += uint64(blocks)
	}
	return done, nil
}

// Flush is SYNCHRONIZE CACHE over the whole LUN.
func (l *LUN) Flush() error {
	_, err := l.s.exec("SYNCHRONIZE CACHE", cdbSyncCache(), true, nil)
	return err
}

// Unmap discards the range when the LUN supports UNMAP; it is only a hint otherwise.
func (l *LUN) Unmap(off, length int64) error {
	if l.readOnly {
		return ErrReadOnly
	}
	lba, err := l.check(int(length), off)
	if err != nil || !l.unmap {
		return err
	}
	blocks := uint64(length) / uint64(l.blockSize)
	per := uint64(l.limits.maxUnmap)
	if per == 0 || per > 1<<22 {
		per = 1 << 22
	}
	params := make([]byte, 24)
	for blocks > 0 {
		n := min(blocks, per)
		if _, err := l.s.exec("UNMAP", cdbUnmap(24), false, unmapParams(params, lba, uint32(n))); err != nil {
			return err
		}
		lba += n
		blocks -= n
	}
	return nil
}

// WriteZeroes uses WRITE SAME(16) with a zero block, falling back to plain writes.
func (l *LUN) WriteZeroes(off, length int64) error {
	if l.readOnly {
		return ErrReadOnly
	}
	lba, err := l.check(int(length), off)
	if err != nil {
		return err
	}
	blocks := uint64(length) / uint64(l.blockSize)
	if l.writeSame.Load() {
		per := l.limits.maxWriteSame
		if per == 0 || per > 65535 {
			per = 65535
		}
		start, left := lba, blocks
		for left > 0 {
			n := min(left, per)
			_, err := l.s.exec("WRITE SAME(16)", cdbWriteSame16(start, uint32(n)), false, l.zero)
			var se *SCSIError
			if errors.As(err, &se) && se.Key == senseIllegalRequest {
				l.writeSame.Store(false) // not supported: write zeroes instead
				break
			}
			if err != nil {
				return err
			}
			start += n
			left -= n
		}
		if left == 0 {
			return nil
		}
		lba, blocks = start, left
	}
	zeros := make([]byte, min(int64(blocks)*int64(l.blockSize), int64(l.maxXfer)))
	for blocks > 0 {
		n := min(blocks, uint64(len(zeros)/l.blockSize))
		if _, err := l.WriteAt(zeros[:n*uint64(l.blockSize)], int64(lba)*int64(l.blockSize)); err != nil {
			return err
		}
		lba += n
		blocks -= n
	}
	return nil
}

// Extent is a run of bytes with one provisioning state. It is the same type as
// blockdev.Extent (an alias of one unnamed struct type), so that Extents satisfies
// the exporter's blockdev.Extenter without this package importing it.
type Extent = struct {
	Length int64  // bytes
	Flags  uint32 // ExtentHole, ExtentZero
}

// Extent flags, as blockdev defines them.
const (
	ExtentHole = 1 << 0 // not mapped to storage (deallocated)
	ExtentZero = 1 << 1 // reads as zeroes
)

// lbaStatusLen is the GET LBA STATUS allocation length: the header and 255
// descriptors, one 4 KiB answer.
const lbaStatusLen = 8 + 16*255

// Extents appends to dst the provisioning state of the range of length bytes at off,
// from one GET LBA STATUS command; it may describe less than the range, never more.
// Deallocated blocks are holes, and read as zeroes when READ CAPACITY(16) says
// LBPRZ. A LUN without logical block provisioning (no LBPME), or whose target
// refuses the command or answers it without describing off, is all data: it is
// then not asked again.
func (l *LUN) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	lba, err := l.check(int(length), off)
	if err != nil {
		return dst, err
	}
	if length <= 0 {
		return dst, nil
	}
	if !l.lbaStatus.Load() {
		return append(dst, Extent{Length: length}), nil
	}
	buf := make([]byte, lbaStatusLen)
	n, err := l.s.exec("GET LBA STATUS", cdbGetLBAStatus(lba, len(buf)), true, buf)
	var se *SCSIError
	if errors.As(err, &se) && se.Key == senseIllegalRequest {
		l.noLBAStatus(err)
		return append(dst, Extent{Length: length}), nil
	}
	if err != nil {
		return dst, err
	}
	start := len(dst)
	dst = appendLBAStatus(dst, buf[:n], lba, uint64(length)/uint64(l.blockSize), l.blockSize, l.lbprz)
	if len(dst) == start {
		l.noLBAStatus(fmt.Errorf("iscsi: GET LBA STATUS at LBA %d: %d-byte answer describes no block there", lba, n))
		dst = append(dst, Extent{Length: length})
	}
	return dst, nil
}

func (l *LUN) noLBAStatus(why error) {
	if l.lbaStatus.Swap(false) {
		l.s.logf("%v; reporting every block as mapped from now on", why)
	}
}

// ReportLUNs lists the LUNs the target exposes to this initiator: the number of a
// single-level LUN (LUNAddr.Number), the 8 bytes read big-endian for any other.
func (s *Session) ReportLUNs() ([]uint64, error) {
	buf := make([]byte, 8+8*256)
	n, err := s.exec("REPORT LUNS", cdbReportLUNs(len(buf)), true, buf)
	if err != nil {
		return nil, err
	}
	if n < 8 {
		return nil, fmt.Errorf("iscsi: REPORT LUNS: %d bytes", n)
	}
	listLen := min(int(binary.BigEndian.Uint32(buf)), n-8)
	var luns []uint64
	for i := 8; i+8 <= 8+listLen; i += 8 {
		a := LUNAddr(buf[i : i+8])
		if n, ok := a.Number(); ok {
			luns = append(luns, n)
		} else {
			luns = append(luns, binary.BigEndian.Uint64(a[:]))
		}
	}
	return luns, nil
}
