package ibft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// structAlign is where Encode places structures, as iPXE does (the spec asks for 8).
const structAlign = 16

// Encode builds a complete table (ACPI header included, checksum filled) that Parse
// decodes back to t, Source aside. The layout follows iPXE's: control, initiator,
// NICs, targets, each 16-byte aligned, then the string heap. NICs[i] and Targets[i]
// fill pair i of the control structure; pairs beyond two become expansion offsets.
// Empty strings and zero addresses are written as absent. Such a table is what
// `qemu -acpitable file=...` expects.
func Encode(t *Table) ([]byte, error) {
	sig := t.Signature
	if sig == "" {
		sig = "iBFT"
	}
	if !validSignature(sig) {
		return nil, fmt.Errorf("ibft: encode: signature %q, want iBFT, IBFT or BIFT", sig)
	}
	if t.Revision > 1 {
		return nil, fmt.Errorf("ibft: encode: revision %d, want 1", t.Revision)
	}
	pairs := max(2, len(t.NICs), len(t.Targets))
	controlLen := 10 + 4*pairs
	e := &encoder{b: make([]byte, HeaderLen+controlLen)}
	copy(e.b[0:4], sig)
	e.b[8] = 1
	for _, f := range []struct {
		name, v string
		at, n   int
	}{
		{"oem_id", t.OEMID, 10, 6},
		{"oem_table_id", t.OEMTableID, 16, 8},
		{"creator_id", t.CreatorID, 28, 4},
	} {
		if len(f.v) > f.n {
			return nil, fmt.Errorf("ibft: encode: %s %q longer than %d bytes", f.name, f.v, f.n)
		}
		copy(e.b[f.at:f.at+f.n], f.v)
	}
	binary.LittleEndian.PutUint32(e.b[24:], t.OEMRevision)
	binary.LittleEndian.PutUint32(e.b[32:], t.CreatorRevision)

	putHeader(e.b[HeaderLen:], idControl, controlLen, 0, 0)
	// Slot 0 is the initiator, then nic/target pairs. Index e.b afresh: place grows it.
	slot := func(i int) []byte { return e.b[HeaderLen+8+2*i:] }

	off := e.place(initiatorLen)
	binary.LittleEndian.PutUint16(slot(0), uint16(off))
	e.initiator(off, &t.Initiator)
	for i := range t.NICs {
		n := &t.NICs[i]
		if err := n.check(i); err != nil {
			return nil, err
		}
		off := e.place(nicLen)
		binary.LittleEndian.PutUint16(slot(1+2*i), uint16(off))
		e.nic(off, n)
	}
	for i := range t.Targets {
		tg := &t.Targets[i]
		raw, err := tg.LUNBytes()
		if err != nil {
			return nil, fmt.Errorf("ibft: encode: %w", err)
		}
		if tg.Index < 0 || tg.Index > 255 || tg.NIC < 0 || tg.NIC > 255 {
			return nil, fmt.Errorf("ibft: encode target%d: index %d or nic %d outside 0..255", i, tg.Index, tg.NIC)
		}
		off := e.place(targetLen)
		binary.LittleEndian.PutUint16(slot(2+2*i), uint16(off))
		e.target(off, tg, raw)
	}
	for _, s := range e.strs {
		e.heapString(s)
	}
	if len(e.b) > 0xffff {
		return nil, fmt.Errorf("ibft: encode: table of %d bytes does not fit 16-bit offsets", len(e.b))
	}
	binary.LittleEndian.PutUint32(e.b[4:], uint32(len(e.b)))
	e.b[9] = -byteSum(e.b)
	return e.b, nil
}

func (n *NIC) check(i int) error {
	if n.Index < 0 || n.Index > 255 {
		return fmt.Errorf("ibft: encode nic%d: index %d outside 0..255", i, n.Index)
	}
	if n.Prefix < 0 || n.Prefix > maxPrefix(n.IP) {
		return fmt.Errorf("ibft: encode nic%d: prefix length %d out of range for %s", i, n.Prefix, n.IP)
	}
	if len(n.MAC) != 0 && len(n.MAC) != 6 {
		return fmt.Errorf("ibft: encode nic%d: MAC %s is not 6 bytes", i, n.MAC)
	}
	return nil
}

// LUNBytes is the 8-byte SAM LUN of the target, as the table stores it and as
// commands carry it: LUNRaw, or the single-level form of LUN when LUNRaw was left
// zero (a table built by hand). The two must agree.
func (tg *Target) LUNBytes() ([8]byte, error) {
	if tg.LUNRaw == [8]byte{} && tg.LUN != 0 {
		raw, err := SAMLUN(tg.LUN)
		if err != nil {
			return raw, fmt.Errorf("ibft: target%d: %v; set LUNRaw", tg.Index, err)
		}
		return raw, nil
	}
	if got := LUNNumber(tg.LUNRaw); got != tg.LUN {
		return tg.LUNRaw, fmt.Errorf("ibft: target%d: lun %d, but lun_raw %x is lun %d", tg.Index, tg.LUN, tg.LUNRaw, got)
	}
	return tg.LUNRaw, nil
}

type encoder struct {
	b    []byte
	strs []pendingString
}

// pendingString is a string descriptor to fill once the heap's place is known.
type pendingString struct {
	desc int // offset of the 4-byte (length, offset) descriptor
	s    string
}

// place appends an aligned, zeroed structure of n bytes and returns its offset.
func (e *encoder) place(n int) int {
	off := (len(e.b) + structAlign - 1) &^ (structAlign - 1)
	e.b = append(e.b, make([]byte, off+n-len(e.b))...)
	return off
}

func (e *encoder) str(desc int, s string) {
	if s != "" {
		e.strs = append(e.strs, pendingString{desc, s})
	}
}

func (e *encoder) heapString(p pendingString) {
	s := cString([]byte(p.s)) // a NUL would end the string for every reader anyway
	if len(s) == 0 {
		return
	}
	binary.LittleEndian.PutUint16(e.b[p.desc:], uint16(len(s)))
	binary.LittleEndian.PutUint16(e.b[p.desc+2:], uint16(len(e.b)))
	e.b = append(e.b, s...)
	e.b = append(e.b, 0)
}

func putHeader(b []byte, id, length, index int, flags uint8) {
	b[0] = byte(id)
	b[1] = 1
	binary.LittleEndian.PutUint16(b[2:], uint16(length))
	b[4] = byte(index)
	b[5] = flags
}

func putAddr(b []byte, a netip.Addr) {
	if !a.IsValid() || a.IsUnspecified() {
		return // absent: all zeros
	}
	a16 := a.As16() // IPv4 becomes ::ffff:a.b.c.d
	copy(b, a16[:])
}

func (e *encoder) initiator(off int, in *Initiator) {
	s := e.b[off:]
	putHeader(s, idInitiator, initiatorLen, 0, in.Flags)
	putAddr(s[6:], in.ISNS)
	putAddr(s[22:], in.SLP)
	putAddr(s[38:], in.Radius[0])
	putAddr(s[54:], in.Radius[1])
	e.str(off+70, in.Name)
}

func (e *encoder) nic(off int, n *NIC) {
	s := e.b[off:]
	putHeader(s, idNIC, nicLen, n.Index, n.Flags)
	putAddr(s[6:], n.IP)
	s[22] = byte(n.Prefix)
	s[23] = n.Origin
	putAddr(s[24:], n.Gateway)
	putAddr(s[40:], n.DNS[0])
	putAddr(s[56:], n.DNS[1])
	putAddr(s[72:], n.DHCP)
	binary.LittleEndian.PutUint16(s[88:], n.VLAN)
	copy(s[90:96], n.MAC)
	binary.LittleEndian.PutUint16(s[96:], n.PCIBDF)
	e.str(off+98, n.Hostname)
}

func (e *encoder) target(off int, tg *Target, lun [8]byte) {
	s := e.b[off:]
	putHeader(s, idTarget, targetLen, tg.Index, tg.Flags)
	putAddr(s[6:], tg.IP)
	binary.LittleEndian.PutUint16(s[22:], tg.Port)
	copy(s[24:32], lun[:])
	s[32] = tg.CHAPType
	s[33] = byte(tg.NIC)
	for i, v := range []string{tg.Name, tg.CHAPName, tg.CHAPSecret, tg.RevCHAPName, tg.RevCHAPSecret} {
		e.str(off+34+4*i, v)
	}
}
