package rootfind

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
)

// FS is a filesystem recognised by its superblock.
type FS struct {
	Type  string // "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat"; "" when unknown
	UUID  string // as blkid prints it
	Label string
}

// Linux reports whether the filesystem can hold a Linux root.
func (f FS) Linux() bool {
	switch f.Type {
	case "ext2", "ext3", "ext4", "xfs", "btrfs":
		return true
	}
	return false
}

// MountType is the type to pass to mount(2): the ext4 driver mounts ext2 and ext3 too,
// and it is the one the initramfs carries.
func (f FS) MountType() string {
	if strings.HasPrefix(f.Type, "ext") {
		return "ext4"
	}
	return f.Type
}

func (f FS) String() string {
	if f.Type == "" {
		return "no known filesystem"
	}
	s := f.Type + " UUID=" + f.UUID
	if f.Label != "" {
		s += fmt.Sprintf(" LABEL=%q", f.Label)
	}
	return s
}

// ProbeFS reads the superblocks isboot knows. An unreadable or unknown device gives the
// zero FS: "no filesystem" is an answer, not an error.
func ProbeFS(r io.ReaderAt) FS {
	// ext and xfs, which come first, are found in the first 4 KiB: at boot each
	// read is a round trip through the target, and the first page of the disk is
	// already in the page cache from the kernel's partition scan. 64 KiB + 4 KiB
	// covers the rest (btrfs's superblock sits at 64 KiB).
	passes := [][]func([]byte) (FS, bool){{probeExt, probeXFS}, {probeExt, probeXFS, probeBtrfs, probeFAT}}
	for i, size := range []int{0x1000, 0x11000} {
		buf := make([]byte, size)
		n, _ := r.ReadAt(buf, 0)
		buf = buf[:n]
		for _, probe := range passes[i] {
			if fs, ok := probe(buf); ok {
				return fs
			}
		}
	}
	return FS{}
}

// at returns buf[off:off+n], or nil when buf is too short.
func at(buf []byte, off, n int) []byte {
	if off+n > len(buf) {
		return nil
	}
	return buf[off : off+n]
}

func uuidString(b []byte) string {
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// ext2/3/4: superblock at 1024, magic 0xEF53 at +0x38.
func probeExt(buf []byte) (FS, bool) {
	sb := at(buf, 1024, 0x100)
	if sb == nil || binary.LittleEndian.Uint16(sb[0x38:]) != 0xEF53 {
		return FS{}, false
	}
	compat := binary.LittleEndian.Uint32(sb[0x5c:])
	incompat := binary.LittleEndian.Uint32(sb[0x60:])
	typ := "ext2"
	const hasJournal = 0x4
	const ext4Only = 0x40 | 0x80 | 0x200 // extents, 64bit, flex_bg
	switch {
	case incompat&ext4Only != 0:
		typ = "ext4"
	case compat&hasJournal != 0:
		typ = "ext3"
	}
	return FS{Type: typ, UUID: uuidString(sb[0x68:0x78]), Label: cString(sb[0x78:0x88])}, true
}

// XFS: "XFSB" at 0, UUID at 32, label at 108.
func probeXFS(buf []byte) (FS, bool) {
	sb := at(buf, 0, 120)
	if sb == nil || string(sb[0:4]) != "XFSB" {
		return FS{}, false
	}
	return FS{Type: "xfs", UUID: uuidString(sb[32:48]), Label: cString(sb[108:120])}, true
}

// btrfs: superblock at 64 KiB, magic at +0x40, fsid at +0x20, label at +0x12b.
func probeBtrfs(buf []byte) (FS, bool) {
	sb := at(buf, 0x10000, 0x22b)
	if sb == nil || string(sb[0x40:0x48]) != "_BHRfS_M" {
		return FS{}, false
	}
	return FS{Type: "btrfs", UUID: uuidString(sb[0x20:0x30]), Label: cString(sb[0x12b:0x22b])}, true
}

// FAT12/16/32: boot signature, then the type string at 0x36 (FAT12/16) or 0x52 (FAT32).
func probeFAT(buf []byte) (FS, bool) {
	bs := at(buf, 0, 512)
	if bs == nil || bs[510] != 0x55 || bs[511] != 0xAA {
		return FS{}, false
	}
	var idOff, labelOff int
	switch {
	case string(bs[0x52:0x57]) == "FAT32":
		idOff, labelOff = 0x43, 0x47
	case string(bs[0x36:0x39]) == "FAT":
		idOff, labelOff = 0x27, 0x2b
	default:
		return FS{}, false
	}
	id := binary.LittleEndian.Uint32(bs[idOff:])
	label := strings.TrimRight(string(bs[labelOff:labelOff+11]), " ")
	if label == "NO NAME" {
		label = ""
	}
	return FS{Type: "vfat", UUID: fmt.Sprintf("%04X-%04X", id>>16, id&0xffff), Label: label}, true
}
