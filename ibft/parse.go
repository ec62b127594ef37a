package ibft

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// Sizes and structure ids fixed by the iBFT specification (v1.03).
const (
	HeaderLen    = 48 // ACPI header (36) + 12 reserved bytes
	controlMin   = 18 // control structure up to and including tgt1_off
	initiatorLen = 74
	nicLen       = 102
	targetLen    = 54

	idControl   = 1
	idInitiator = 2
	idNIC       = 3
	idTarget    = 4
	idExtension = 5
)

// Signatures accepted for the table (the spec says iBFT; older firmware wrote the others).
var Signatures = []string{"iBFT", "IBFT", "BIFT"}

// Error is one defect found in a table: which structure, where it starts, what is wrong.
type Error struct {
	Struct string // "header", "control", "initiator", "nic0", "target1", ...
	Offset int    // offset of that structure from the table start
	Msg    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("ibft: %s at %#x: %s", e.Struct, e.Offset, e.Msg)
}

func errorf(name string, off int, format string, args ...any) error {
	return &Error{Struct: name, Offset: off, Msg: fmt.Sprintf(format, args...)}
}

// Parse validates and decodes a table. b may extend past the table's length field (as
// a memory window does); the bytes after it are ignored. Every offset and length is
// checked against the table, so hostile input yields an *Error, never a panic.
func Parse(b []byte) (*Table, error) {
	if len(b) < HeaderLen {
		return nil, errorf("header", 0, "have %d bytes, want at least %d", len(b), HeaderLen)
	}
	sig := string(b[0:4])
	if !validSignature(sig) {
		return nil, errorf("header", 0, "signature %q, want iBFT, IBFT or BIFT", sig)
	}
	length := binary.LittleEndian.Uint32(b[4:8])
	if length < HeaderLen+controlMin {
		return nil, errorf("header", 0, "length %d, want at least %d", length, HeaderLen+controlMin)
	}
	if uint64(length) > uint64(len(b)) {
		return nil, errorf("header", 0, "length %d, but only %d bytes present (truncated)", length, len(b))
	}
	b = b[:length]
	if rev := b[8]; rev != 1 {
		return nil, errorf("header", 0, "revision %d, want 1", rev)
	}
	if sum := byteSum(b); sum != 0 {
		return nil, errorf("header", 0, "checksum: bytes sum to %#02x, want 0", sum)
	}
	t := &Table{
		Signature:       sig,
		Revision:        b[8],
		OEMID:           cString(b[10:16]),
		OEMTableID:      cString(b[16:24]),
		OEMRevision:     binary.LittleEndian.Uint32(b[24:28]),
		CreatorID:       cString(b[28:32]),
		CreatorRevision: binary.LittleEndian.Uint32(b[32:36]),
		NICs:            []NIC{},
		Targets:         []Target{},
	}
	d := decoder{b: b}
	if err := d.structures(t); err != nil {
		return nil, err
	}
	return t, nil
}

// decoder reads structures out of one checked table.
type decoder struct {
	b []byte
}

func (d *decoder) structures(t *Table) error {
	ctl, err := d.header("control", HeaderLen, idControl, controlMin, true)
	if err != nil {
		return err
	}
	// Offsets follow the 8-byte prefix (header + extensions); an odd trailing byte is ignored.
	var offsets []int
	for p := HeaderLen + 8; p+2 <= HeaderLen+len(ctl); p += 2 {
		offsets = append(offsets, int(binary.LittleEndian.Uint16(d.b[p:])))
	}
	if off := offsets[0]; off != 0 {
		if t.Initiator, err = d.initiator(off); err != nil {
			return err
		}
	}
	// Then nic/target pairs: nic0, target0, nic1, target1, and expansion pairs.
	for slot, off := range offsets[1:] {
		pair := slot / 2
		if off == 0 || pair >= 2 && d.isExtension(off) {
			continue // absent, or a vendor extension in an expansion slot: nothing for us
		}
		if slot%2 == 0 {
			n, err := d.nic(fmt.Sprintf("nic%d", pair), off)
			if err != nil {
				return err
			}
			t.NICs = append(t.NICs, n)
			continue
		}
		tg, err := d.target(fmt.Sprintf("target%d", pair), off)
		if err != nil {
			return err
		}
		t.Targets = append(t.Targets, tg)
	}
	return nil
}

func (d *decoder) isExtension(off int) bool {
	return off >= HeaderLen && off < len(d.b) && d.b[off] == idExtension
}

// header checks the 6-byte structure header at off and returns the whole structure.
// atLeast allows a longer structure (only the control structure may grow).
func (d *decoder) header(name string, off, id, want int, atLeast bool) ([]byte, error) {
	if off < HeaderLen {
		return nil, errorf(name, off, "offset inside the %d-byte table header", HeaderLen)
	}
	if off+6 > len(d.b) {
		return nil, errorf(name, off, "structure header runs past table end %#x", len(d.b))
	}
	h := d.b[off:]
	if int(h[0]) != id {
		return nil, errorf(name, off, "structure id %d, want %d", h[0], id)
	}
	if h[1] != 1 {
		return nil, errorf(name, off, "version %d, want 1", h[1])
	}
	n := int(binary.LittleEndian.Uint16(h[2:4]))
	if atLeast && n < want {
		return nil, errorf(name, off, "length %d, want at least %d", n, want)
	}
	if !atLeast && n != want {
		return nil, errorf(name, off, "length %d, want %d", n, want)
	}
	if off+n > len(d.b) {
		return nil, errorf(name, off, "length %d runs past table end %#x", n, len(d.b))
	}
	return d.b[off : off+n], nil
}

func (d *decoder) initiator(off int) (Initiator, error) {
	const name = "initiator"
	s, err := d.header(name, off, idInitiator, initiatorLen, false)
	if err != nil {
		return Initiator{}, err
	}
	in := Initiator{
		Flags:  s[5],
		ISNS:   addr(s[6:22]),
		SLP:    addr(s[22:38]),
		Radius: [2]netip.Addr{addr(s[38:54]), addr(s[54:70])},
	}
	in.Name, err = d.str(name, off, "initiator_name", s[70:74])
	return in, err
}

func (d *decoder) nic(name string, off int) (NIC, error) {
	s, err := d.header(name, off, idNIC, nicLen, false)
	if err != nil {
		return NIC{}, err
	}
	n := NIC{
		Index:   int(s[4]),
		Flags:   s[5],
		IP:      addr(s[6:22]),
		Prefix:  int(s[22]),
		Origin:  s[23],
		Gateway: addr(s[24:40]),
		DNS:     [2]netip.Addr{addr(s[40:56]), addr(s[56:72])},
		DHCP:    addr(s[72:88]),
		VLAN:    binary.LittleEndian.Uint16(s[88:90]),
		PCIBDF:  binary.LittleEndian.Uint16(s[96:98]),
	}
	if max := maxPrefix(n.IP); n.Prefix > max {
		return NIC{}, errorf(name, off, "prefix length %d, want at most %d for %s", n.Prefix, max, n.IP)
	}
	if mac := s[90:96]; !allZero(mac) {
		n.MAC = net.HardwareAddr(append([]byte(nil), mac...))
	}
	n.Hostname, err = d.str(name, off, "hostname", s[98:102])
	return n, err
}

func (d *decoder) target(name string, off int) (Target, error) {
	s, err := d.header(name, off, idTarget, targetLen, false)
	if err != nil {
		return Target{}, err
	}
	tg := Target{
		Index:    int(s[4]),
		Flags:    s[5],
		IP:       addr(s[6:22]),
		Port:     binary.LittleEndian.Uint16(s[22:24]),
		CHAPType: s[32],
		NIC:      int(s[33]),
	}
	copy(tg.LUNRaw[:], s[24:32])
	tg.LUN = LUNNumber(tg.LUNRaw)
	fields := []struct {
		field string
		dst   *string
	}{
		{"target_name", &tg.Name},
		{"chap_name", &tg.CHAPName},
		{"chap_secret", &tg.CHAPSecret},
		{"rev_chap_name", &tg.RevCHAPName},
		{"rev_chap_secret", &tg.RevCHAPSecret},
	}
	for i, f := range fields {
		p := 34 + 4*i
		if *f.dst, err = d.str(name, off, f.field, s[p:p+4]); err != nil {
			return Target{}, err
		}
	}
	return tg, nil
}

// str decodes a heap string from its 4-byte (length, offset) descriptor. The length
// excludes the NUL; a length of 0 means empty whatever the offset. Some firmware counts
// the NUL in the length, so the value stops at the first NUL, as the kernel's does.
func (d *decoder) str(name string, off int, field string, desc []byte) (string, error) {
	n := int(binary.LittleEndian.Uint16(desc[0:2]))
	p := int(binary.LittleEndian.Uint16(desc[2:4]))
	if n == 0 {
		return "", nil
	}
	if p < HeaderLen {
		return "", errorf(name, off, "%s offset %#x inside the %d-byte table header", field, p, HeaderLen)
	}
	if p+n > len(d.b) {
		return "", errorf(name, off, "%s at %#x, length %d, runs past table end %#x", field, p, n, len(d.b))
	}
	return cString(d.b[p : p+n]), nil
}

// addr decodes a 16-byte iBFT address: IPv4 is stored IPv4-mapped; all zeros and
// ::ffff:0.0.0.0 both mean "absent" and give the zero Addr.
func addr(b []byte) netip.Addr {
	a := netip.AddrFrom16([16]byte(b)).Unmap()
	if a.IsUnspecified() {
		return netip.Addr{}
	}
	return a
}

func maxPrefix(a netip.Addr) int {
	if a.Is4() {
		return 32
	}
	return 128
}

func validSignature(s string) bool {
	for _, v := range Signatures {
		if s == v {
			return true
		}
	}
	return false
}

func byteSum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// cString returns b up to its first NUL.
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
