package blockdev

// Extent is a run of bytes with one allocation state, as an Extenter reports it.
//
// It is an alias of an unnamed struct type, not a defined type, so that a backend
// can implement Extenter without importing this package: the iscsi package declares
// the same alias, and identical unnamed struct types with exported fields are the
// same type in every package (as the refusal errors wrap an errno for the same
// reason).
type Extent = struct {
	Length int64  // bytes, a positive multiple of the block size
	Flags  uint32 // ExtentHole, ExtentZero
}

// Extent flags. The values are NBD's base:allocation state bits, which they mean.
const (
	// ExtentHole: the range is not allocated in the backend (thin provisioning);
	// writing to it may need space.
	ExtentHole = 1 << 0
	// ExtentZero: the range reads as zeroes.
	ExtentZero = 1 << 1
)

// Extenter is implemented by devices that can tell which ranges are allocated (the
// iSCSI LUN with GET LBA STATUS, Mem). Exporters check for it with a type
// assertion; a device without it, or one that cannot answer, is all data.
type Extenter interface {
	// Extents appends to dst the consecutive extents that describe the range of
	// length bytes at off, both multiples of BlockSize and inside the device,
	// beginning at off. It may stop early (a device reports what one query tells
	// it) but describes at least one block when it returns no error; it never
	// describes bytes past off+length.
	Extents(dst []Extent, off, length int64) ([]Extent, error)
}

// memMaxExtents bounds one Mem.Extents answer, as a real device's query is bounded.
const memMaxExtents = 1024

// Extents reports every all-zero block as a hole that reads as zeroes and the rest
// as data: Mem allocates nothing per block, so a zero block is as good as
// unallocated.
func (m *Mem) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off < 0 || length <= 0 || off+length > int64(len(m.data)) {
		return dst, ErrOutOfRange
	}
	bs := int64(m.blockSize)
	if bs <= 0 {
		bs = 512
	}
	start := len(dst)
	for pos, end := off, off+length; pos < end; {
		n := min(bs, end-pos)
		var flags uint32
		if allZero(m.data[pos : pos+n]) {
			flags = ExtentHole | ExtentZero
		}
		if last := len(dst) - 1; last >= start && dst[last].Flags == flags {
			dst[last].Length += n
		} else if len(dst)-start == memMaxExtents {
			break
		} else {
			dst = append(dst, Extent{Length: n, Flags: flags})
		}
		pos += n
	}
	return dst, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
