package ibft

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// Synthetic fixtures, written to ../testdata/ibft by `go test ./ibft -run TestGolden -update`.
// Valid ones come from Encode, except ipxe-like-bios, which is laid out by hand the way
// iPXE's ibft.c does it, so the decoder is checked against bytes Encode did not write.
// Broken ones are a valid table with one defect (checksum refixed unless the checksum
// is the defect).

type fixture struct {
	name  string
	bytes func() []byte
}

var ip = netip.MustParseAddr

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func mustEncode(t *Table) []byte {
	b, err := Encode(t)
	if err != nil {
		panic(err)
	}
	return b
}

// qemuSlirpNIC is the NIC iPXE describes under QEMU user networking.
func qemuSlirpNIC() NIC {
	return NIC{
		Index: 0, Flags: FlagValid | FlagBootSelected,
		IP: ip("10.0.2.15"), Prefix: 24, Origin: OriginDHCP,
		Gateway: ip("10.0.2.2"), DNS: [2]netip.Addr{ip("10.0.2.3")}, DHCP: ip("10.0.2.2"),
		MAC: mac("52:54:00:12:34:56"), PCIBDF: 0x0018, // 00:03.0
	}
}

func basicTable() *Table {
	return &Table{
		Signature: "iBFT", Revision: 1, OEMID: "FENSYS", OEMTableID: "iPXE",
		Initiator: Initiator{Flags: FlagValid | FlagBootSelected, Name: "iqn.2010-04.org.ipxe:test"},
		NICs:      []NIC{qemuSlirpNIC()},
		Targets: []Target{{
			Index: 0, Flags: FlagValid | FlagBootSelected, IP: ip("10.0.2.2"), Port: 3260,
			LUN: 1, LUNRaw: [8]byte{0, 1}, NIC: 0, Name: "iqn.2026-01.org.isboot:disk1",
		}},
	}
}

var fixtures = []fixture{
	{"ipxe-like-bios", ipxeLike},
	{"basic", func() []byte { return mustEncode(basicTable()) }},
	{"two-nics-two-targets", func() []byte {
		t := basicTable()
		t.NICs[0].Flags = FlagValid
		t.NICs = append(t.NICs, NIC{
			Index: 1, Flags: FlagValid | FlagBootSelected, IP: ip("192.168.10.5"), Prefix: 16,
			Origin: OriginManual, Gateway: ip("192.168.0.1"),
			DNS: [2]netip.Addr{ip("192.168.0.53"), ip("192.168.0.54")},
			MAC: mac("52:54:00:ab:cd:ef"), PCIBDF: 0x0020, Hostname: "node2",
		})
		t.Targets[0].Flags = FlagValid
		t.Targets = append(t.Targets, Target{
			Index: 1, Flags: FlagValid | FlagBootSelected, IP: ip("192.168.0.10"), Port: 3261,
			LUN: 2, LUNRaw: [8]byte{0, 2}, NIC: 1, Name: "iqn.2026-01.org.isboot:disk2",
		})
		return mustEncode(t)
	}},
	{"vlan-static", func() []byte {
		t := basicTable()
		n := &t.NICs[0]
		n.VLAN, n.Origin, n.IP, n.Prefix = 100, OriginManual, ip("172.16.100.20"), 24
		n.Gateway, n.DHCP, n.Hostname = ip("172.16.100.1"), netip.Addr{}, "vlanhost"
		n.MAC = mac("02:00:00:00:01:00")
		t.Targets[0].IP = ip("172.16.100.2")
		return mustEncode(t)
	}},
	{"ipv6", func() []byte {
		t := basicTable()
		t.NICs[0] = NIC{
			Index: 0, Flags: FlagValid | FlagBootSelected | FlagNICGlobal,
			IP: ip("2001:db8::15"), Prefix: 64, Origin: OriginRA, Gateway: ip("fe80::1"),
			DNS: [2]netip.Addr{ip("2001:db8::53")}, MAC: mac("52:54:00:12:34:56"), PCIBDF: 0x0018,
		}
		t.Targets[0].IP = ip("2001:db8::2")
		t.Targets[0].LUN, t.Targets[0].LUNRaw = 0, [8]byte{}
		return mustEncode(t)
	}},
	{"expansion", func() []byte {
		t := basicTable()
		t.NICs, t.Targets = nil, nil
		for i := range 4 {
			flags := uint8(FlagValid)
			if i == 3 {
				flags |= FlagBootSelected
			}
			t.NICs = append(t.NICs, NIC{
				Index: i, Flags: flags, IP: netip.AddrFrom4([4]byte{10, 0, byte(i), 15}), Prefix: 24,
				Origin: OriginDHCP, MAC: net.HardwareAddr{0x52, 0x54, 0, 0, 0, byte(i)},
				PCIBDF: uint16((3 + i) << 3),
			})
			t.Targets = append(t.Targets, Target{
				Index: i, Flags: flags, IP: netip.AddrFrom4([4]byte{10, 0, byte(i), 2}), Port: 3260,
				LUN: uint64(i), LUNRaw: [8]byte{0, byte(i)}, NIC: i, Name: "iqn.2026-01.org.isboot:exp" + string(rune('0'+i)),
			})
		}
		return mustEncode(t)
	}},
	{"edk2-origin16", func() []byte {
		t := basicTable()
		t.OEMID, t.OEMTableID, t.OEMRevision, t.CreatorID, t.CreatorRevision = "INTEL ", "EDK2    ", 2, "INTL", 0x20091013
		t.NICs[0].Origin, t.NICs[0].DHCP = OriginUnchanged, netip.Addr{}
		t.Targets[0].LUN, t.Targets[0].LUNRaw = 300, [8]byte{0x41, 0x2c} // flat space addressing
		return mustEncode(t)
	}},
	{"chap-mutual", func() []byte {
		t := basicTable()
		tg := &t.Targets[0]
		tg.CHAPType, tg.CHAPName, tg.CHAPSecret = CHAPMutual, "user", "secretsecret1"
		tg.RevCHAPName, tg.RevCHAPSecret = "target", "targetsecret2"
		return mustEncode(t)
	}},
	{"signature-bift", func() []byte {
		t := basicTable()
		t.Signature = "BIFT"
		return mustEncode(t)
	}},
	{"no-boot-flags", func() []byte { // fallback: first valid target, its NIC by association
		t := basicTable()
		t.NICs[0].Flags, t.Targets[0].Flags = FlagValid, FlagValid
		return mustEncode(t)
	}},

	{"broken-zero-length", func() []byte { return nil }},
	{"broken-length-zero", mutate(func(b []byte) { binary.LittleEndian.PutUint32(b[4:], 0) })},
	{"broken-truncated", func() []byte { b := mustEncode(basicTable()); return b[:len(b)/2] }},
	{"broken-checksum", func() []byte { b := mustEncode(basicTable()); b[len(b)-2] ^= 0x20; return b }},
	{"broken-signature", mutate(func(b []byte) { copy(b, "XBFT") })},
	{"broken-revision", mutate(func(b []byte) { b[8] = 2 })},
	{"broken-control-short", mutate(func(b []byte) { putU16(b, HeaderLen+2, 16) })},
	{"broken-nic-length", mutate(func(b []byte) { putU16(b, nicOff(b)+2, 90) })},
	{"broken-target-id", mutate(func(b []byte) { b[targetOff(b)] = idNIC })},
	{"broken-offset-in-header", mutate(func(b []byte) { putU16(b, HeaderLen+10, 0x10) })},
	{"broken-struct-past-end", mutate(func(b []byte) { // a target header 20 bytes before the end
		end := len(b) - 20
		copy(b[end:], b[targetOff(b):targetOff(b)+6])
		putU16(b, HeaderLen+12, uint16(end))
	})},
	{"broken-string-past-end", mutate(func(b []byte) {
		putU16(b, targetOff(b)+36, uint16(len(b)-5)) // target_name: 28 bytes from 5 before the end
	})},
	{"broken-string-in-header", mutate(func(b []byte) { putU16(b, initiatorOff(b)+72, 0x20) })},
	{"broken-prefix", mutate(func(b []byte) { b[nicOff(b)+22] = 33 })},
}

func putU16(b []byte, at int, v uint16) { binary.LittleEndian.PutUint16(b[at:], v) }
func initiatorOff(b []byte) int         { return int(binary.LittleEndian.Uint16(b[HeaderLen+8:])) }
func nicOff(b []byte) int               { return int(binary.LittleEndian.Uint16(b[HeaderLen+10:])) }
func targetOff(b []byte) int            { return int(binary.LittleEndian.Uint16(b[HeaderLen+12:])) }

// mutate applies one defect to the basic table and refixes the checksum.
func mutate(f func([]byte)) func() []byte {
	return func() []byte {
		b := mustEncode(basicTable())
		f(b)
		b[9] = 0
		b[9] = -byteSum(b)
		return b
	}
}

// ipxeLike lays a table out as iPXE's ibft_install does for one NIC and one target:
// room for two pairs, structures 16-byte aligned, strings appended after the last
// target slot in fill order (initiator, NICs, targets), ACPI ids set by the installer.
func ipxeLike() []byte {
	const (
		initiatorAt = 0x50
		nicAt       = 0xa0
		targetAt    = 0x180 // after two 112-byte NIC slots
		stringsAt   = 0x200 // after two 64-byte target slots
	)
	b := make([]byte, stringsAt)
	heap := []byte{}
	str := func(desc int, s string) {
		putU16(b, desc, uint16(len(s)))
		putU16(b, desc+2, uint16(stringsAt+len(heap)))
		heap = append(append(heap, s...), 0)
	}
	v4 := func(at int, a string) {
		b[at+10], b[at+11] = 0xff, 0xff
		copy(b[at+12:], ip(a).AsSlice())
	}
	copy(b, "iBFT")
	b[8] = 1
	copy(b[10:], "FENSYS")
	copy(b[16:], "iPXE")
	putHeader(b[HeaderLen:], idControl, 18, 0, 0)
	putU16(b, HeaderLen+8, initiatorAt)
	putU16(b, HeaderLen+10, nicAt)
	putU16(b, HeaderLen+12, targetAt)

	putHeader(b[initiatorAt:], idInitiator, initiatorLen, 0, 3)
	str(initiatorAt+70, "iqn.2010-04.org.ipxe:52540012345600")

	n := nicAt
	putHeader(b[n:], idNIC, nicLen, 0, 3)
	v4(n+6, "10.0.2.15")
	b[n+22], b[n+23] = 24, OriginDHCP
	v4(n+24, "10.0.2.2")
	v4(n+40, "10.0.2.3")
	v4(n+72, "10.0.2.2")
	copy(b[n+90:], mac("52:54:00:12:34:56"))
	putU16(b, n+96, 0x0018)

	tg := targetAt
	putHeader(b[tg:], idTarget, targetLen, 0, 3)
	v4(tg+6, "10.0.2.2")
	putU16(b, tg+22, 3260)
	b[tg+25] = 1 // LUN 1
	str(tg+34, "iqn.2026-01.org.isboot:disk1")

	b = append(b, heap...)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(b)))
	b[9] = -byteSum(b)
	return b
}
