package ibft

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// sysfs rebuilds a table from the files the kernel's iscsi_ibft module exports. It is
// the last resort: the kernel found the table where we could not (e.g. /dev/mem is
// locked down), so what it shows is all we get.
func (f *finder) sysfs() (*Table, []byte, error) {
	dir := f.path(sysfsDir)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) && f.opts.LoadModule != nil {
		f.logf("sysfs: %s missing; loading iscsi_ibft", sysfsDir)
		if err := f.opts.LoadModule("iscsi_ibft"); err != nil {
			f.logf("sysfs: load iscsi_ibft: %v", err)
		}
	}
	if _, err := os.Stat(dir); err != nil {
		f.logf("sysfs: %v", err)
		return nil, nil, fmt.Errorf("%w in %s", ErrNotFound, sysfsDir)
	}
	t, err := readSysfs(dir)
	if err != nil {
		f.logf("sysfs: %v", err)
		return nil, nil, err
	}
	t.Source = "sysfs:" + sysfsDir
	b, err := Encode(t)
	if err != nil {
		return nil, nil, fmt.Errorf("ibft: sysfs: %w", err)
	}
	f.logf("sysfs: rebuilt table, %d NIC(s), %d target(s)", len(t.NICs), len(t.Targets))
	return t, b, nil
}

// sysfsAttrs reads one kobject directory: absent files (the kernel hides absent values)
// read as "".
type sysfsAttrs struct {
	dir string
	err error
}

func (a *sysfsAttrs) str(name string) string {
	b, err := os.ReadFile(filepath.Join(a.dir, name))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) && a.err == nil {
			a.err = fmt.Errorf("ibft: sysfs: %w", err)
		}
		return ""
	}
	return strings.TrimRight(string(b), "\n")
}

func (a *sysfsAttrs) num(name string, bits int) uint64 {
	s := a.str(name)
	if s == "" {
		return 0
	}
	n, err := strconv.ParseUint(s, 10, bits)
	if err != nil && a.err == nil {
		a.err = fmt.Errorf("ibft: sysfs: %s/%s: %q is not a %d-bit number", filepath.Base(a.dir), name, s, bits)
	}
	return n
}

func (a *sysfsAttrs) addr(name string) netip.Addr {
	s := a.str(name)
	if s == "" {
		return netip.Addr{}
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		if a.err == nil {
			a.err = fmt.Errorf("ibft: sysfs: %s/%s: %q is not an address", filepath.Base(a.dir), name, s)
		}
		return netip.Addr{}
	}
	if ip = ip.Unmap(); ip.IsUnspecified() {
		return netip.Addr{}
	}
	return ip
}

func readSysfs(dir string) (*Table, error) {
	h := &sysfsAttrs{dir: filepath.Join(dir, "acpi_header")}
	t := &Table{
		Signature:  h.str("signature"),
		Revision:   1,
		OEMID:      h.str("oem_id"),
		OEMTableID: h.str("oem_table_id"),
		NICs:       []NIC{},
		Targets:    []Target{},
	}
	if t.Signature == "" {
		t.Signature = "iBFT"
	}
	in := &sysfsAttrs{dir: filepath.Join(dir, "initiator")}
	t.Initiator = Initiator{
		Flags:  uint8(in.num("flags", 8)),
		Name:   in.str("initiator-name"),
		ISNS:   in.addr("isns-server"),
		SLP:    in.addr("slp-server"),
		Radius: [2]netip.Addr{in.addr("pri-radius-server"), in.addr("sec-radius-server")},
	}
	errs := []error{h.err, in.err}
	for _, d := range numbered(dir, "ethernet") {
		n, err := sysfsNIC(d)
		errs = append(errs, err)
		t.NICs = append(t.NICs, n)
	}
	for _, d := range numbered(dir, "target") {
		tg, err := sysfsTarget(d)
		errs = append(errs, err)
		t.Targets = append(t.Targets, tg)
	}
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return t, nil
}

func sysfsNIC(dir string) (NIC, error) {
	a := &sysfsAttrs{dir: dir}
	n := NIC{
		Index:    int(a.num("index", 8)),
		Flags:    uint8(a.num("flags", 8)),
		IP:       a.addr("ip-addr"),
		Prefix:   int(a.num("prefix-len", 8)),
		Origin:   uint8(a.num("origin", 8)),
		Gateway:  a.addr("gateway"),
		DNS:      [2]netip.Addr{a.addr("primary-dns"), a.addr("secondary-dns")},
		DHCP:     a.addr("dhcp"),
		VLAN:     uint16(a.num("vlan", 16)),
		Hostname: a.str("hostname"),
	}
	if n.Prefix == 0 { // kernels before prefix-len only show the IPv4 mask
		if m, err := netip.ParseAddr(a.str("subnet-mask")); err == nil && m.Is4() {
			ones, _ := net.IPMask(m.AsSlice()).Size()
			n.Prefix = ones
		}
	}
	if s := a.str("mac"); s != "" {
		mac, err := net.ParseMAC(s)
		if err != nil && a.err == nil {
			a.err = fmt.Errorf("ibft: sysfs: %s/mac: %q is not a MAC address", filepath.Base(dir), s)
		}
		if len(mac) == 6 && !allZero(mac) {
			n.MAC = mac
		}
	}
	// The kernel links "device" to the PCI function the NIC's bus/dev/fn names.
	if link, err := os.Readlink(filepath.Join(dir, "device")); err == nil {
		var dom, bus, dev, fn uint
		if _, err := fmt.Sscanf(filepath.Base(link), "%x:%x:%x.%x", &dom, &bus, &dev, &fn); err == nil {
			n.PCIBDF = uint16(bus<<8 | dev<<3 | fn)
		}
	}
	return n, a.err
}

func sysfsTarget(dir string) (Target, error) {
	a := &sysfsAttrs{dir: dir}
	tg := Target{
		Index:         int(a.num("index", 8)),
		Flags:         uint8(a.num("flags", 8)),
		IP:            a.addr("ip-addr"),
		Port:          uint16(a.num("port", 16)),
		CHAPType:      uint8(a.num("chap-type", 8)),
		NIC:           int(a.num("nic-assoc", 8)),
		Name:          a.str("target-name"),
		CHAPName:      a.str("chap-name"),
		CHAPSecret:    a.str("chap-secret"),
		RevCHAPName:   a.str("rev-chap-name"),
		RevCHAPSecret: a.str("rev-chap-name-secret"),
	}
	raw, err := sysfsLUN(a.str("lun"))
	if err != nil && a.err == nil {
		a.err = fmt.Errorf("ibft: sysfs: %s/lun: %v", filepath.Base(dir), err)
	}
	tg.LUNRaw, tg.LUN = raw, LUNNumber(raw)
	return tg, a.err
}

// sysfsLUN undoes the kernel's lun format, which prints each byte with "%x" and no
// padding: 8 digits are 8 bytes below 16, 16 digits are 8 full bytes; anything in
// between cannot be split unambiguously.
func sysfsLUN(s string) ([8]byte, error) {
	var raw [8]byte
	switch len(s) {
	case 0:
		return raw, nil
	case 8:
		for i := range s {
			v, err := strconv.ParseUint(s[i:i+1], 16, 8)
			if err != nil {
				return raw, fmt.Errorf("%q is not hex", s)
			}
			raw[i] = byte(v)
		}
		return raw, nil
	case 16:
		_, err := hex.Decode(raw[:], []byte(s))
		if err != nil {
			return raw, fmt.Errorf("%q is not hex", s)
		}
		return raw, nil
	}
	return raw, fmt.Errorf("%q is ambiguous (the kernel does not pad bytes)", s)
}

// numbered lists dir/<prefix>N directories in N order.
func numbered(dir, prefix string) []string {
	ents, _ := os.ReadDir(dir)
	type entry struct {
		n    int
		path string
	}
	var found []entry
	for _, e := range ents {
		n, err := strconv.Atoi(strings.TrimPrefix(e.Name(), prefix))
		if err != nil || !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		found = append(found, entry{n, filepath.Join(dir, e.Name())})
	}
	sort.Slice(found, func(i, j int) bool { return found[i].n < found[j].n })
	paths := make([]string, len(found))
	for i, e := range found {
		paths[i] = e.path
	}
	return paths
}
