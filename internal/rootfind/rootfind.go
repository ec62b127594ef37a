// Package rootfind picks the root filesystem on the boot LUN: by root= (UUID, LABEL,
// PARTUUID, PARTLABEL), else the first partition holding a Linux filesystem, else the
// whole LUN. It reads the partition table and superblocks itself, from any io.ReaderAt,
// so it works on the block device at boot and on an image file in tests.
package rootfind

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf16"

	"github.com/u-root/u-root/pkg/mount/gpt"

	"github.com/isboot/isboot/internal/cmdline"
)

// GPT partition type GUIDs that say "Linux root lives here".
var linuxTypes = map[string]bool{
	"0fc63daf-8483-4772-8e79-3d69d8477de4": true, // Linux filesystem data
	"4f68bce3-e8cd-4db1-96e7-fbcaf984b709": true, // root (x86-64)
	"44479540-f297-41b2-9af7-d131d5f0458a": true, // root (x86)
	"b921b045-1df0-41c3-af44-4c6f280d3fae": true, // root (arm64)
}

// Partition is one entry of the partition table, numbered as the kernel numbers it
// (nbd0p<Number>).
type Partition struct {
	Number    int
	Start     int64 // bytes
	Size      int64 // bytes
	PartUUID  string
	PartLabel string
	Type      string // GPT type GUID, or the MBR type as two hex digits
	FS        FS
}

// Disk is the LUN as seen at boot.
type Disk struct {
	Table      string // "gpt", "mbr" or "" (none)
	Partitions []Partition
	FS         FS // a filesystem on the whole device, if any
}

// Probe reads the partition table (GPT, else MBR with its logical partitions) and
// every superblock.
func Probe(r io.ReaderAt, size int64) (*Disk, error) {
	d := &Disk{FS: ProbeFS(r)}
	var mbr [512]byte
	if _, err := r.ReadAt(mbr[:], 0); err != nil {
		if errors.Is(err, io.EOF) {
			return d, nil // smaller than a sector: nothing to find
		}
		return nil, fmt.Errorf("rootfind: read sector 0: %w", err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		return d, nil
	}
	if mbr[450] == 0xEE { // protective MBR
		g, err := gpt.Table(r, gpt.HeaderOff)
		if err != nil {
			return nil, fmt.Errorf("rootfind: GPT: %w", err)
		}
		d.Table = "gpt"
		for i, p := range g.Parts {
			if p.PartGUID == (gpt.GUID{}) {
				continue
			}
			d.Partitions = append(d.Partitions, Partition{
				Number:    i + 1,
				Start:     int64(p.FirstLBA) * gpt.BlockSize,
				Size:      int64(p.LastLBA-p.FirstLBA+1) * gpt.BlockSize,
				PartUUID:  strings.ToLower(p.UniqueGUID.String()),
				PartLabel: utf16Name(p.Name[:]),
				Type:      strings.ToLower(p.PartGUID.String()),
			})
		}
	} else if d.FS.Type != "vfat" { // a FAT boot sector also ends in 55 AA
		d.Table = "mbr"
		sig := binary.LittleEndian.Uint32(mbr[440:])
		var extended []mbrEntry
		for i, e := range mbrEntries(mbr[:]) {
			switch {
			case e.empty():
			case e.extended():
				extended = append(extended, e)
			default:
				d.Partitions = append(d.Partitions, e.partition(i+1, 0, sig))
			}
		}
		// Logical partitions are numbered from 5 on, in chain order, as the kernel does.
		next := 5
		for _, ext := range extended {
			d.Partitions = append(d.Partitions, logicals(r, ext, sig, &next)...)
		}
	}
	for i := range d.Partitions {
		p := &d.Partitions[i]
		if p.Start+p.Size > size {
			return nil, fmt.Errorf("rootfind: partition %d ends at byte %d, past the device's %d", p.Number, p.Start+p.Size, size)
		}
		p.FS = ProbeFS(io.NewSectionReader(r, p.Start, p.Size))
	}
	if d.Table != "" {
		d.FS = FS{} // the bytes at 0 belong to the table, not a filesystem
	}
	return d, nil
}

// mbrEntry is one 16-byte MBR or EBR partition entry; start and size in sectors.
type mbrEntry struct {
	typ         byte
	start, size int64
}

func mbrEntries(sector []byte) [4]mbrEntry {
	var es [4]mbrEntry
	for i := range es {
		e := sector[446+16*i : 446+16*(i+1)]
		es[i] = mbrEntry{e[4], int64(binary.LittleEndian.Uint32(e[8:])), int64(binary.LittleEndian.Uint32(e[12:]))}
	}
	return es
}

func (e mbrEntry) empty() bool    { return e.typ == 0 || e.size == 0 }
func (e mbrEntry) extended() bool { return e.typ == 0x05 || e.typ == 0x0f || e.typ == 0x85 }

// partition is e as partition number n, its start relative to sector base. The
// PARTUUID is the kernel's for MBR disks: disk signature and partition number.
func (e mbrEntry) partition(n int, base int64, sig uint32) Partition {
	return Partition{
		Number: n, Start: (base + e.start) * 512, Size: e.size * 512,
		PartUUID: fmt.Sprintf("%08x-%02x", sig, n),
		Type:     fmt.Sprintf("%02x", e.typ),
	}
}

// maxLogical bounds the EBR chain walk (the kernel's own limit is about as high); it
// also ends a chain that loops.
const maxLogical = 128

// logicals walks the chain of extended boot records in ext. Each EBR holds one
// logical partition, placed relative to the EBR, and a link to the next EBR,
// placed relative to the extended partition. A chain that breaks (bad signature,
// unreadable sector, a loop) ends the walk with what was found, as in the kernel.
func logicals(r io.ReaderAt, ext mbrEntry, sig uint32, next *int) []Partition {
	var parts []Partition
	seen := map[int64]bool{}
	ebr := ext.start
	for range maxLogical {
		if seen[ebr] {
			break
		}
		seen[ebr] = true
		var sector [512]byte
		if _, err := r.ReadAt(sector[:], ebr*512); err != nil || sector[510] != 0x55 || sector[511] != 0xAA {
			break
		}
		link := int64(-1)
		for _, e := range mbrEntries(sector[:]) {
			switch {
			case e.empty():
			case e.extended():
				if link < 0 {
					link = ext.start + e.start
				}
			default:
				parts = append(parts, e.partition(*next, ebr, sig))
				*next++
			}
		}
		if link < 0 {
			break
		}
		ebr = link
	}
	return parts
}

func utf16Name(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// Choice is where root is: a partition number (0 = the whole device) and its filesystem.
type Choice struct {
	Partition int
	FS        FS
	Why       string // for the boot log
}

// Find picks the root as root= asks. root=/path is not handled here: a path names a
// device node, not something on this disk.
func (d *Disk) Find(root cmdline.Root) (Choice, error) {
	match := func(what string, ok func(p Partition) bool, whole bool) (Choice, error) {
		for _, p := range d.Partitions {
			if ok(p) {
				return Choice{p.Number, p.FS, fmt.Sprintf("partition %d has %s", p.Number, what)}, nil
			}
		}
		if whole {
			return Choice{0, d.FS, "the whole device has " + what}, nil
		}
		return Choice{}, fmt.Errorf("rootfind: no partition with %s (%s)", what, d.summary())
	}
	switch root.Kind {
	case cmdline.RootUUID:
		return match("UUID="+root.Value, func(p Partition) bool { return strings.EqualFold(p.FS.UUID, root.Value) },
			strings.EqualFold(d.FS.UUID, root.Value) && d.FS.Type != "")
	case cmdline.RootLabel:
		return match("LABEL="+root.Value, func(p Partition) bool { return p.FS.Label == root.Value },
			d.FS.Label == root.Value && d.FS.Type != "")
	case cmdline.RootPartUUID:
		return match("PARTUUID="+root.Value, func(p Partition) bool { return strings.EqualFold(p.PartUUID, root.Value) }, false)
	case cmdline.RootPartLabel:
		return match("PARTLABEL="+root.Value, func(p Partition) bool { return p.PartLabel == root.Value }, false)
	case cmdline.RootDefault:
		for _, p := range d.Partitions {
			if p.FS.Linux() {
				return Choice{p.Number, p.FS, fmt.Sprintf("partition %d is the first with a Linux filesystem (%s)", p.Number, p.FS)}, nil
			}
		}
		if d.FS.Type != "" {
			return Choice{0, d.FS, fmt.Sprintf("the whole device holds %s", d.FS)}, nil
		}
		for _, p := range d.Partitions {
			if linuxTypes[p.Type] || p.Type == "83" {
				return Choice{p.Number, p.FS, fmt.Sprintf("partition %d has a Linux partition type but no known superblock", p.Number)}, nil
			}
		}
		return Choice{0, d.FS, "no partition holds a Linux filesystem: using the whole device"}, nil
	}
	return Choice{}, fmt.Errorf("rootfind: root=%s names a device path, not something on the LUN", root)
}

// summary lists what is on the disk, for an error that tells the user what to type.
func (d *Disk) summary() string {
	if len(d.Partitions) == 0 {
		return fmt.Sprintf("no partition table; whole device: %s", d.FS)
	}
	var b strings.Builder
	b.WriteString(d.Table + ":")
	for i, p := range d.Partitions {
		if i > 0 {
			b.WriteString(";")
		}
		fmt.Fprintf(&b, " %d PARTUUID=%s", p.Number, p.PartUUID)
		if p.PartLabel != "" {
			fmt.Fprintf(&b, " PARTLABEL=%q", p.PartLabel)
		}
		fmt.Fprintf(&b, " %s", p.FS)
	}
	return b.String()
}
