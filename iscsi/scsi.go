package iscsi

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// SCSI status codes (SAM-5).
const (
	statusGood           = 0x00
	statusCheckCondition = 0x02
	statusBusy           = 0x08
	statusReservation    = 0x18
	statusTaskSetFull    = 0x28
)

// Sense keys.
const (
	senseNotReady       = 0x2
	senseMediumError    = 0x3
	senseIllegalRequest = 0x5
	senseUnitAttention  = 0x6
	senseDataProtect    = 0x7
	senseAbortedCommand = 0xb
)

// SCSIError is a command the target completed with a status other than GOOD.
type SCSIError struct {
	Op             string
	Status         byte
	Key, ASC, ASCQ byte
}

func (e *SCSIError) Error() string {
	if e.Status == statusCheckCondition {
		return fmt.Sprintf("iscsi: %s: CHECK CONDITION, %s (sense %x/%02x/%02x)", e.Op, senseKeyName(e.Key), e.Key, e.ASC, e.ASCQ)
	}
	return fmt.Sprintf("iscsi: %s: SCSI status 0x%02x", e.Op, e.Status)
}

func senseKeyName(k byte) string {
	names := [...]string{"no sense", "recovered error", "not ready", "medium error",
		"hardware error", "illegal request", "unit attention", "data protect",
		"blank check", "vendor specific", "copy aborted", "aborted command",
		"equal", "volume overflow", "miscompare", "completed"}
	return names[k&0xf]
}

// parseSense extracts key, ASC and ASCQ from fixed (0x70/0x71) or descriptor
// (0x72/0x73) sense data.
func parseSense(b []byte) (key, asc, ascq byte, ok bool) {
	if len(b) < 1 {
		return 0, 0, 0, false
	}
	switch b[0] & 0x7f {
	case 0x70, 0x71:
		if len(b) < 14 {
			if len(b) >= 3 {
				return b[2] & 0xf, 0, 0, true
			}
			return 0, 0, 0, false
		}
		return b[2] & 0xf, b[12], b[13], true
	case 0x72, 0x73:
		if len(b) < 4 {
			return 0, 0, 0, false
		}
		return b[1] & 0xf, b[2], b[3], true
	}
	return 0, 0, 0, false
}

// LUNAddr is a logical unit address as commands carry it: the 8-byte SAM LUN
// structure (SAM-5 §4.7), first level first. The iBFT stores the same form, which is
// used as is: a bus number, a second level or extended addressing has no plain LUN
// number, and a number rebuilt from one would address another LUN.
type LUNAddr [8]byte

// SingleLevelLUN is the address of LUN n on bus 0: peripheral device addressing
// below 256 (LUN 1 is 00 01 00 ...), flat space addressing up to 16383 (LUN 300 is
// 41 2c 00 ...).
func SingleLevelLUN(n uint64) (LUNAddr, error) {
	var a LUNAddr
	switch {
	case n < 256:
		a[1] = byte(n)
	case n < 1<<14:
		a[0] = 0x40 | byte(n>>8)
		a[1] = byte(n)
	default:
		return a, fmt.Errorf("LUN %d has no single-level SAM form (0-16383)", n)
	}
	return a, nil
}

// Number is the LUN number of a single-level address on bus 0 (peripheral device or
// flat space addressing); ok is false for any other address.
func (a LUNAddr) Number() (n uint64, ok bool) {
	if a[2]|a[3]|a[4]|a[5]|a[6]|a[7] != 0 {
		return 0, false
	}
	switch a[0] >> 6 {
	case 0:
		if a[0] != 0 {
			return 0, false // a bus number: no plain LUN
		}
		return uint64(a[1]), true
	case 1:
		return uint64(a[0]&0x3f)<<8 | uint64(a[1]), true
	}
	return 0, false
}

// String is the LUN number when a is the single-level form of one (SingleLevelLUN),
// else the 8 bytes in hex, as the iBFT's lun_raw prints them: 0105000000000000.
func (a LUNAddr) String() string {
	if n, ok := a.Number(); ok {
		if canon, _ := SingleLevelLUN(n); canon == a {
			return strconv.FormatUint(n, 10)
		}
	}
	return hex.EncodeToString(a[:])
}

// ParseLUNAddr reads what String writes: a LUN number (0-16383), or 16 hex digits
// for the 8-byte form itself.
func ParseLUNAddr(s string) (LUNAddr, error) {
	var a LUNAddr
	if len(s) == 2*len(a) {
		if _, err := hex.Decode(a[:], []byte(s)); err != nil {
			return a, fmt.Errorf("LUN %q: want a number 0-16383 or 16 hex digits", s)
		}
		return a, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return a, fmt.Errorf("LUN %q: want a number 0-16383 or 16 hex digits", s)
	}
	return SingleLevelLUN(n)
}

// MarshalText and UnmarshalText make a LUNAddr read as its String in JSON (the
// daemon's configuration).
func (a LUNAddr) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

func (a *LUNAddr) UnmarshalText(b []byte) error {
	v, err := ParseLUNAddr(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// cdb is a command descriptor block with its length.
type cdb struct {
	b [16]byte
	n int
}

func cdbTestUnitReady() cdb { return cdb{n: 6} }

func cdbInquiry(page byte, evpd bool, alloc int) cdb {
	c := cdb{n: 6}
	c.b[0] = 0x12
	if evpd {
		c.b[1] = 1
		c.b[2] = page
	}
	binary.BigEndian.PutUint16(c.b[3:], uint16(alloc))
	return c
}

func cdbReadCapacity10() cdb { c := cdb{n: 10}; c.b[0] = 0x25; return c }

func cdbReadCapacity16() cdb {
	c := cdb{n: 16}
	c.b[0], c.b[1] = 0x9e, 0x10
	binary.BigEndian.PutUint32(c.b[10:], 32)
	return c
}

func cdbReportLUNs(alloc int) cdb {
	c := cdb{n: 12}
	c.b[0] = 0xa0
	binary.BigEndian.PutUint32(c.b[6:], uint32(alloc))
	return c
}

func cdbModeSense6() cdb {
	c := cdb{n: 6}
	c.b[0], c.b[2], c.b[4] = 0x1a, 0x3f, 192 // all pages; only the header matters
	return c
}

// cdbRW builds READ or WRITE, (10) when LBA and length fit, else (16).
func cdbRW(write, fua bool, lba uint64, blocks uint32) cdb {
	var c cdb
	if lba <= 0xffffffff && blocks <= 0xffff {
		c.n = 10
		c.b[0] = 0x28
		if write {
			c.b[0] = 0x2a
		}
		binary.BigEndian.PutUint32(c.b[2:], uint32(lba))
		binary.BigEndian.PutUint16(c.b[7:], uint16(blocks))
	} else {
		c.n = 16
		c.b[0] = 0x88
		if write {
			c.b[0] = 0x8a
		}
		binary.BigEndian.PutUint64(c.b[2:], lba)
		binary.BigEndian.PutUint32(c.b[10:], blocks)
	}
	if fua {
		c.b[1] |= 0x08
	}
	return c
}

func cdbSyncCache() cdb { c := cdb{n: 10}; c.b[0] = 0x35; return c }

func cdbUnmap(paramLen int) cdb {
	c := cdb{n: 10}
	c.b[0] = 0x42
	binary.BigEndian.PutUint16(c.b[7:], uint16(paramLen))
	return c
}

func cdbWriteSame16(lba uint64, blocks uint32) cdb {
	c := cdb{n: 16}
	c.b[0] = 0x93
	binary.BigEndian.PutUint64(c.b[2:], lba)
	binary.BigEndian.PutUint32(c.b[10:], blocks)
	return c
}

// cdbReportOpcode is REPORT SUPPORTED OPERATION CODES (SPC-4) for one opcode without
// a service action: byte 1 of its answer says whether the target implements it.
func cdbReportOpcode(op byte, alloc int) cdb {
	c := cdb{n: 12}
	c.b[0], c.b[1], c.b[2], c.b[3] = 0xa3, 0x0c, 0x01, op
	binary.BigEndian.PutUint32(c.b[6:], uint32(alloc))
	return c
}

// opcodeSupported reads REPORT SUPPORTED OPERATION CODES' one-command answer: 011b
// is supported as the standard says, 101b supported in a vendor-specific way.
func opcodeSupported(b []byte) bool {
	return len(b) >= 2 && (b[1]&7 == 3 || b[1]&7 == 5)
}

// cdbGetLBAStatus is SERVICE ACTION IN(16) / GET LBA STATUS (SBC-3) from lba.
func cdbGetLBAStatus(lba uint64, alloc int) cdb {
	c := cdb{n: 16}
	c.b[0], c.b[1] = 0x9e, 0x12
	binary.BigEndian.PutUint64(c.b[2:], lba)
	binary.BigEndian.PutUint32(c.b[10:], uint32(alloc))
	return c
}

// appendLBAStatus appends to dst the extents that GET LBA STATUS answer b gives for
// the blocks [lba, lba+blocks): consecutive from lba, clipped to the range, merged
// where neighbours agree. It stops at the first descriptor that leaves a gap, so a
// malformed answer yields fewer extents (none when it does not describe lba), never
// wrong ones.
func appendLBAStatus(dst []Extent, b []byte, lba, blocks uint64, blockSize int, lbprz bool) []Extent {
	if len(b) >= 4 {
		if n := uint64(binary.BigEndian.Uint32(b)) + 4; n < uint64(len(b)) {
			b = b[:n] // PARAMETER DATA LENGTH counts the bytes after itself
		}
	}
	if len(b) < 8 {
		return dst
	}
	start := len(dst)
	pos, end := lba, lba+blocks
	for d := b[8:]; len(d) >= 16 && pos < end; d = d[16:] {
		first := binary.BigEndian.Uint64(d)
		count := uint64(binary.BigEndian.Uint32(d[8:]))
		if first > pos || count == 0 {
			break
		}
		if count <= pos-first {
			continue // ends before pos
		}
		stop := pos + min(count-(pos-first), end-pos) // no sum that can overflow
		var flags uint32
		switch d[12] & 0x0f { // PROVISIONING STATUS
		case 1: // deallocated
			flags = ExtentHole
			if lbprz {
				flags |= ExtentZero
			}
		case 2: // anchored: storage reserved, so no hole, but read as deallocated
			if lbprz {
				flags = ExtentZero
			}
		}
		length := int64(stop-pos) * int64(blockSize)
		if last := len(dst) - 1; last >= start && dst[last].Flags == flags {
			dst[last].Length += length
		} else {
			dst = append(dst, Extent{Length: length, Flags: flags})
		}
		pos = stop
	}
	return dst
}

// unmapParams fills the UNMAP parameter list for one range into b (24 bytes).
func unmapParams(b []byte, lba uint64, blocks uint32) []byte {
	b = b[:24]
	clear(b)
	binary.BigEndian.PutUint16(b[0:], 22)
	binary.BigEndian.PutUint16(b[2:], 16)
	binary.BigEndian.PutUint64(b[8:], lba)
	binary.BigEndian.PutUint32(b[16:], blocks)
	return b
}

// identity is what makes a LUN the same LUN after a reconnect: its device
// identification (VPD 0x83) and unit serial number (VPD 0x80).
type identity struct {
	devID  string
	serial string
}

func (a identity) String() string {
	return fmt.Sprintf("serial %q, %d-byte device id", strings.TrimSpace(a.serial), len(a.devID))
}

// vpdPayload returns the page body of VPD response b, bounded by what was received.
func vpdPayload(b []byte) []byte {
	if len(b) < 4 {
		return nil
	}
	n := int(binary.BigEndian.Uint16(b[2:]))
	if 4+n > len(b) {
		n = len(b) - 4
	}
	return b[4 : 4+n]
}

// blockLimits are the VPD 0xB0 values that bound how we split requests.
type blockLimits struct {
	maxTransfer   uint32 // blocks; 0 = no limit reported
	maxUnmap      uint32 // blocks per UNMAP; 0 = none
	maxUnmapDescs uint32
	maxWriteSame  uint64
}

func parseBlockLimits(b []byte) blockLimits {
	p := vpdPayload(b)
	var l blockLimits
	if len(p) >= 12 {
		l.maxTransfer = binary.BigEndian.Uint32(p[4:])
	}
	if len(p) >= 24 {
		l.maxUnmap = binary.BigEndian.Uint32(p[16:])
		l.maxUnmapDescs = binary.BigEndian.Uint32(p[20:])
	}
	if len(p) >= 40 {
		l.maxWriteSame = binary.BigEndian.Uint64(p[32:])
	}
	return l
}

// Inquiry is what a LUN says about itself, as FreeBSD's `camcontrol inquiry` shows it.
// Text fields are trimmed and hold printable ASCII only; a field the LUN does not
// report is "".
type Inquiry struct {
	Vendor   string // T10 vendor identification (standard INQUIRY), e.g. "IET"
	Product  string // product identification, e.g. "VIRTUAL-DISK"
	Revision string // product revision level, e.g. "0001"
	Serial   string // unit serial number (VPD page 0x80)
	// ID is the LUN's preferred designator (VPD page 0x83), spelled as Linux's
	// wwid attribute: naa.<hex> before eui.<hex> before t10.<text>.
	ID        string
	BlockSize int
}

// parseStandardInquiry fills Vendor, Product and Revision from a standard INQUIRY
// answer (SPC-4 §6.6.2: bytes 8-15, 16-31, 32-35).
func (q *Inquiry) parseStandardInquiry(b []byte) {
	field := func(lo, hi int) string {
		if len(b) <= lo {
			return ""
		}
		return printable(b[lo:min(hi, len(b))])
	}
	q.Vendor, q.Product, q.Revision = field(8, 16), field(16, 32), field(32, 36)
}

// Designator types and code sets of VPD page 0x83 (SPC-4 §7.8.6).
const (
	designatorT10    = 1
	designatorEUI64  = 2
	designatorNAA    = 3
	codeSetBinary    = 1
	associationLUN   = 0
	designatorHeader = 4
)

// designatorID picks the preferred logical-unit designator from the body of VPD page
// 0x83 (NAA, then EUI-64, then T10 vendor ID; the longest of a type) and spells it
// naa.<hex>, eui.<hex> or t10.<text>. A malformed list yields what came before the
// fault; none at all, "".
func designatorID(page []byte) string {
	rank := map[byte]int{designatorNAA: 3, designatorEUI64: 2, designatorT10: 1}
	prefix := map[byte]string{designatorNAA: "naa.", designatorEUI64: "eui.", designatorT10: "t10."}
	best, bestRank, bestLen := "", 0, 0
	for d := page; len(d) >= designatorHeader; {
		n := int(d[3])
		if designatorHeader+n > len(d) {
			break
		}
		codeSet, assoc, typ := d[0]&0x0f, d[1]>>4&3, d[1]&0x0f
		body := d[designatorHeader : designatorHeader+n]
		d = d[designatorHeader+n:]
		r := rank[typ]
		if assoc != associationLUN || r == 0 || n == 0 || r < bestRank || r == bestRank && n <= bestLen {
			continue
		}
		var v string
		if codeSet == codeSetBinary {
			v = hex.EncodeToString(body)
		} else {
			v = printable(body)
		}
		if v != "" {
			best, bestRank, bestLen = prefix[typ]+v, r, n
		}
	}
	return best
}

// printable trims spaces and NULs from b and replaces what is not printable ASCII
// with '?', so a target's bytes cannot break a status line or a terminal.
func printable(b []byte) string {
	b = bytes.Trim(b, " \x00")
	out := make([]byte, len(b))
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		out[i] = c
	}
	return string(out)
}
