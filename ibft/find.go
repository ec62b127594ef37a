package ibft

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// Sources Find knows, in the order "auto" tries them.
const (
	SourceAuto  = "auto"
	SourceACPI  = "acpi"
	SourceMem   = "mem"
	SourceSysfs = "sysfs"
	SourceFile  = "file"
)

// ErrNotFound means no source held a table (as opposed to a table that is invalid).
var ErrNotFound = errors.New("ibft: no table found")

// Where firmware leaves the table, relative to FindOptions.Root.
const (
	acpiTablesDir = "/sys/firmware/acpi/tables"
	sysfsDir      = "/sys/firmware/ibft"
	devMem        = "/dev/mem"
)

// The BIOS scan window (iBFT spec; the kernel's iscsi_ibft_find scans the same).
const (
	memStart  = 0x80000
	memEnd    = 0x100000 // a table must end below 1 MiB
	vgaStart  = 0xA0000  // video memory, never holds the table
	vgaEnd    = 0xC0000
	memStride = 16
	memPage   = 4096
)

// FindOptions says where to look. The zero value looks everywhere on the running system.
type FindOptions struct {
	Source string // auto (or ""), acpi, mem, sysfs or file
	File   string // the file, for Source "file"
	Table  int    // ACPI instance, 1-based (ibft.acpi_table=N); 0 means 1
	Root   string // prefix for /sys and /dev/mem, so tests can use a fake tree; "" is "/"
	// Mem reads physical memory; nil opens Root/dev/mem.
	Mem io.ReaderAt
	// LoadModule loads a kernel module by name; Find calls it with "iscsi_ibft" when
	// /sys/firmware/ibft is missing. nil skips loading.
	LoadModule func(name string) error
	// Logf, if set, hears every step (ibft.verbose=1).
	Logf func(format string, args ...any)
}

// Find locates a table and returns it decoded, with the bytes it was decoded from
// (for sysfs, the table re-encoded from the kernel's files). "auto" tries ACPI, then the
// BIOS memory scan, then sysfs. When nothing valid turns up, the error is the first
// defect seen in a candidate table, else one wrapping ErrNotFound.
func Find(opts FindOptions) (*Table, []byte, error) {
	f := finder{opts: opts}
	switch opts.Source {
	case "", SourceAuto:
		for _, try := range []func() (*Table, []byte, error){f.acpi, f.mem, f.sysfs} {
			if t, b, err := try(); err == nil {
				return t, b, nil
			} else if !errors.Is(err, ErrNotFound) && f.defect == nil {
				f.defect = err
			}
		}
		if f.defect != nil {
			return nil, nil, f.defect
		}
		return nil, nil, fmt.Errorf("%w (tried acpi, mem, sysfs)", ErrNotFound)
	case SourceACPI:
		return f.acpi()
	case SourceMem:
		return f.mem()
	case SourceSysfs:
		return f.sysfs()
	case SourceFile:
		return f.file()
	}
	return nil, nil, fmt.Errorf("ibft: unknown source %q (want auto, acpi, mem, sysfs or file)", opts.Source)
}

type finder struct {
	opts   FindOptions
	defect error // first invalid table seen
}

func (f *finder) logf(format string, args ...any) {
	if f.opts.Logf != nil {
		f.opts.Logf("ibft: "+format, args...)
	}
}

func (f *finder) path(p string) string {
	if f.opts.Root == "" {
		return p
	}
	return filepath.Join(f.opts.Root, p)
}

// parse decodes candidate bytes, logging the outcome.
func (f *finder) parse(source string, b []byte) (*Table, []byte, error) {
	t, err := Parse(b)
	if err != nil {
		f.logf("%s: %v", source, err)
		return nil, nil, fmt.Errorf("%w (%s)", err, source)
	}
	t.Source = source
	f.logf("%s: valid table, %d bytes, %d NIC(s), %d target(s)", source, len(b), len(t.NICs), len(t.Targets))
	return t, b, nil
}

func (f *finder) file() (*Table, []byte, error) {
	if f.opts.File == "" {
		return nil, nil, errors.New("ibft: source file needs a file name")
	}
	b, err := os.ReadFile(f.opts.File)
	if err != nil {
		return nil, nil, fmt.Errorf("ibft: %w", err)
	}
	return f.parse("file:"+f.opts.File, b)
}

// acpi reads /sys/firmware/acpi/tables/<sig>[N]. Linux names a lone table of a
// signature "iBFT" and numbers them "iBFT1", "iBFT2", ... when there are several.
func (f *finder) acpi() (*Table, []byte, error) {
	n := f.opts.Table
	if n <= 0 {
		n = 1
	}
	for _, sig := range Signatures {
		names := []string{sig + strconv.Itoa(n)}
		if n == 1 {
			names = []string{sig, sig + "1"}
		}
		for _, name := range names {
			p := acpiTablesDir + "/" + name
			b, err := os.ReadFile(f.path(p))
			if errors.Is(err, fs.ErrNotExist) {
				f.logf("acpi: %s: not present", p)
				continue
			}
			if err != nil {
				f.logf("acpi: %v", err)
				return nil, nil, fmt.Errorf("ibft: acpi: %w", err)
			}
			return f.parse("acpi:"+p, b)
		}
	}
	return nil, nil, fmt.Errorf("%w in ACPI (instance %d)", ErrNotFound, n)
}

// mem scans base memory the way the spec and the kernel do: 16-byte steps from
// 0x80000 to 1 MiB, skipping video memory. A candidate must carry a signature, a
// length that ends inside the window, and a valid checksum; stray signature bytes
// (iPXE's own code contains "iBFT") fail those and the scan goes on.
func (f *finder) mem() (*Table, []byte, error) {
	r := f.opts.Mem
	if r == nil {
		m, err := os.Open(f.path(devMem))
		if err != nil {
			f.logf("mem: %v", err)
			return nil, nil, fmt.Errorf("%w: %v", ErrNotFound, err)
		}
		defer m.Close()
		r = m
	}
	var defect error
	for _, w := range [][2]int{{memStart, vgaStart}, {vgaEnd, memEnd}} {
		buf := make([]byte, w[1]-w[0])
		// Page by page: a page the kernel refuses must not hide the others.
		var bad int
		var firstErr error
		for p := 0; p < len(buf); p += memPage {
			if _, err := r.ReadAt(buf[p:p+memPage], int64(w[0]+p)); err != nil {
				bad++
				firstErr = cmp.Or(firstErr, err)
			}
		}
		if bad > 0 {
			f.logf("mem: %d of %d pages in %#x-%#x unreadable (%v)", bad, len(buf)/memPage, w[0], w[1], firstErr)
		}
		for p := 0; p+HeaderLen <= len(buf); p += memStride {
			if !validSignature(string(buf[p : p+4])) {
				continue
			}
			at := w[0] + p
			length := int(binary.LittleEndian.Uint32(buf[p+4:]))
			if length < HeaderLen || p+length > len(buf) {
				f.logf("mem: candidate at %#x: length %d does not end inside %#x-%#x", at, length, w[0], w[1])
				continue
			}
			if sum := byteSum(buf[p : p+length]); sum != 0 {
				f.logf("mem: candidate at %#x: checksum: bytes sum to %#02x", at, sum)
				continue
			}
			t, b, err := f.parse(fmt.Sprintf("mem:%#x", at), buf[p:p+length])
			if err == nil {
				return t, b, nil
			}
			if defect == nil {
				defect = err
			}
		}
	}
	if defect != nil {
		return nil, nil, defect
	}
	return nil, nil, fmt.Errorf("%w in memory %#x-%#x", ErrNotFound, memStart, memEnd)
}
