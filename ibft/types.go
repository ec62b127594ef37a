// Package ibft finds, validates, decodes and encodes the iSCSI Boot Firmware Table
// that firmware leaves in memory after an iSCSI boot.
//
// Parse treats its input as hostile: every offset, length and string is checked
// against the table, and each defect is one *Error naming the structure and its
// offset. Encode writes a complete ACPI table (for tests and `qemu -acpitable`) that
// Parse reads back unchanged. Find looks where firmware puts the table (ACPI, the BIOS
// base-memory scan, the kernel's sysfs view, a file). BootChoice picks the NIC and
// target to boot from; JSON and Keys render what `isboot ibft` and the status file show.
package ibft

import (
	"net"
	"net/netip"
)

// Table is a decoded iBFT. Absent addresses are the zero netip.Addr; absent strings "".
type Table struct {
	Source     string // where it was found: "acpi:/sys/...", "mem:0x9a000", "sysfs:/sys/firmware/ibft", "file:..."
	Signature  string // "iBFT", "IBFT" or "BIFT"
	Revision   uint8
	OEMID      string // up to 6 bytes
	OEMTableID string // up to 8 bytes
	// The rest of the ACPI header, kept so a decoded table encodes back unchanged.
	OEMRevision     uint32
	CreatorID       string // up to 4 bytes ("ASL compiler id")
	CreatorRevision uint32
	Initiator       Initiator
	NICs            []NIC    // every NIC structure present, in control-structure order
	Targets         []Target // every target structure present, in control-structure order
}

// Structure flags.
const (
	FlagValid          = 0x01 // block valid
	FlagBootSelected   = 0x02 // firmware booting selected
	FlagNICGlobal      = 0x04 // NIC: IPv6 address is global (not link-local)
	FlagTgtRadiusCHAP  = 0x04 // target: use RADIUS for CHAP
	FlagTgtRadiusRCHAP = 0x08 // target: use RADIUS for reverse CHAP
)

// NIC origin values (the IP prefix origin from the Windows IP helper API).
const (
	OriginOther     = 0
	OriginManual    = 1
	OriginWellKnown = 2
	OriginDHCP      = 3
	OriginRA        = 4
	OriginUnchanged = 16 // EDK2 writes this
)

// CHAP types in a target structure.
const (
	CHAPNone   = 0
	CHAPOneWay = 1
	CHAPMutual = 2
)

// Initiator is the initiator structure: who we are and optional directory servers.
type Initiator struct {
	Flags  uint8
	Name   string
	ISNS   netip.Addr
	SLP    netip.Addr
	Radius [2]netip.Addr // primary, secondary
}

// NIC is a NIC structure: how firmware configured the interface it booted through.
// Index is the structure's own index, which targets name in their NIC association.
type NIC struct {
	Index    int
	Flags    uint8
	IP       netip.Addr
	Prefix   int
	Origin   uint8
	Gateway  netip.Addr
	DNS      [2]netip.Addr
	DHCP     netip.Addr
	VLAN     uint16
	MAC      net.HardwareAddr
	PCIBDF   uint16 // bus<<8 | device<<3 | function
	Hostname string
}

// Target is a target structure: an iSCSI target, its boot LUN and CHAP accounts.
type Target struct {
	Index         int
	Flags         uint8
	IP            netip.Addr
	Port          uint16
	LUN           uint64  // the LUN number decoded from the SAM form
	LUNRaw        [8]byte // the 8-byte SAM LUN as stored (LUN 1 = 00 01 00 ...)
	CHAPType      uint8
	NIC           int // index of the NIC this target is reached through
	Name          string
	CHAPName      string
	CHAPSecret    string
	RevCHAPName   string
	RevCHAPSecret string
}
