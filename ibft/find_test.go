package ibft

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func fixtureBytes(t *testing.T, name string) []byte {
	t.Helper()
	for _, f := range fixtures {
		if f.name == name {
			return f.bytes()
		}
	}
	t.Fatalf("no fixture %s", name)
	return nil
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// zeroMem is physical memory that holds nothing, so auto searches fall through.
var zeroMem = bytes.NewReader(make([]byte, memEnd))

func TestFindACPIInstances(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, acpiTablesDir)
	writeFile(t, filepath.Join(dir, "iBFT1"), fixtureBytes(t, "basic"))
	writeFile(t, filepath.Join(dir, "iBFT2"), fixtureBytes(t, "two-nics-two-targets"))
	for _, tc := range []struct {
		n      int
		source string
		nics   int
	}{
		{0, "acpi:/sys/firmware/acpi/tables/iBFT1", 1},
		{1, "acpi:/sys/firmware/acpi/tables/iBFT1", 1},
		{2, "acpi:/sys/firmware/acpi/tables/iBFT2", 2},
	} {
		tb, raw, err := Find(FindOptions{Source: SourceACPI, Root: root, Table: tc.n})
		if err != nil {
			t.Fatalf("instance %d: %v", tc.n, err)
		}
		if tb.Source != tc.source || len(tb.NICs) != tc.nics || len(raw) == 0 {
			t.Errorf("instance %d: source %q, %d NICs, %d bytes", tc.n, tb.Source, len(tb.NICs), len(raw))
		}
	}
	if _, _, err := Find(FindOptions{Source: SourceACPI, Root: root, Table: 3}); !errors.Is(err, ErrNotFound) {
		t.Errorf("instance 3: err %v, want ErrNotFound", err)
	}

	// A lone table has no number; other signatures count too.
	root = t.TempDir()
	writeFile(t, filepath.Join(root, acpiTablesDir, "IBFT"), fixtureBytes(t, "basic"))
	tb, _, err := Find(FindOptions{Source: SourceACPI, Root: root})
	if err != nil || tb.Source != "acpi:/sys/firmware/acpi/tables/IBFT" {
		t.Errorf("lone IBFT: %v, %+v", err, tb)
	}
}

func TestFindACPIBrokenReportsDefect(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, acpiTablesDir, "iBFT"), fixtureBytes(t, "broken-nic-length"))
	_, _, err := Find(FindOptions{Root: root, Mem: zeroMem})
	if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "nic0 at 0xa0: length 90, want 102") {
		t.Errorf("err %v, want the nic0 defect", err)
	}
}

// memWith returns 1 MiB of "physical memory" with tables placed at the given addresses.
func memWith(tables map[int][]byte) *bytes.Reader {
	m := make([]byte, memEnd)
	for at, b := range tables {
		copy(m[at:], b)
	}
	return bytes.NewReader(m)
}

func TestFindMemScan(t *testing.T) {
	good := fixtureBytes(t, "ipxe-like-bios")
	badSum := append([]byte(nil), good...)
	badSum[100] ^= 1
	var logs []string
	logf := func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) }
	mem := memWith(map[int][]byte{
		0x80000: badSum,       // stray signature, bad checksum: skipped
		0x90008: good,         // not 16-byte aligned: never looked at
		0xA0000: good,         // video memory: skipped
		0x9a000: good,         // the real one
		0xFFF00: good[:0x100], // would cross 1 MiB
	})
	tb, raw, err := Find(FindOptions{Source: SourceMem, Mem: mem, Logf: logf})
	if err != nil {
		t.Fatal(err)
	}
	if tb.Source != "mem:0x9a000" || !bytes.Equal(raw, good) {
		t.Errorf("found %s (%d bytes), want mem:0x9a000", tb.Source, len(raw))
	}
	if !strings.Contains(strings.Join(logs, "\n"), "candidate at 0x80000: checksum") {
		t.Errorf("verbose log lacks the skipped candidate:\n%s", strings.Join(logs, "\n"))
	}

	// Only unusable candidates: not found, and the VGA and 1 MiB rules hold.
	mem = memWith(map[int][]byte{0xA0000: good, 0xB0000: good, 0xFFF00: good})
	if _, _, err := Find(FindOptions{Source: SourceMem, Mem: mem}); !errors.Is(err, ErrNotFound) {
		t.Errorf("err %v, want ErrNotFound", err)
	}
	// Just below 1 MiB is fine.
	at := (memEnd - len(good)) &^ 15
	tb, _, err = Find(FindOptions{Source: SourceMem, Mem: memWith(map[int][]byte{at: good})})
	if err != nil || tb.Source != fmt.Sprintf("mem:%#x", at) {
		t.Errorf("table ending below 1 MiB: %v", err)
	}
	// A valid checksum around a broken structure is a defect, reported as such.
	_, _, err = Find(FindOptions{Source: SourceMem, Mem: memWith(map[int][]byte{0x9a000: fixtureBytes(t, "broken-prefix")})})
	if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "prefix length 33") {
		t.Errorf("broken table in memory: %v", err)
	}
}

// writeKernelSysfs lays t out the way the kernel's iscsi_ibft module shows it.
func writeKernelSysfs(t *testing.T, root string, tb *Table) {
	dir := filepath.Join(root, sysfsDir)
	put := func(sub, name, v string) { writeFile(t, filepath.Join(dir, sub, name), []byte(v)) }
	ip := func(sub, name string, a netip.Addr) { // %pI4, or %pI6: every group, zero-padded
		switch {
		case a.Is4():
			put(sub, name, a.String()+"\n")
		case a.Is6():
			put(sub, name, a.StringExpanded()+"\n")
		}
	}
	put("acpi_header", "signature", tb.Signature+"\n")
	put("acpi_header", "oem_id", tb.OEMID+"\n")
	put("acpi_header", "oem_table_id", tb.OEMTableID+"\n")
	in := tb.Initiator
	put("initiator", "index", "0\n")
	put("initiator", "flags", fmt.Sprintf("%d\n", in.Flags))
	put("initiator", "initiator-name", in.Name+"\n")
	ip("initiator", "isns-server", in.ISNS)
	for _, n := range tb.NICs {
		sub := fmt.Sprintf("ethernet%d", n.Index)
		put(sub, "index", fmt.Sprintf("%d\n", n.Index))
		put(sub, "flags", fmt.Sprintf("%d\n", n.Flags))
		ip(sub, "ip-addr", n.IP)
		if n.Prefix != 0 {
			put(sub, "prefix-len", fmt.Sprintf("%d\n", n.Prefix))
		}
		put(sub, "origin", fmt.Sprintf("%d\n", n.Origin))
		ip(sub, "gateway", n.Gateway)
		ip(sub, "primary-dns", n.DNS[0])
		ip(sub, "secondary-dns", n.DNS[1])
		ip(sub, "dhcp", n.DHCP)
		put(sub, "vlan", fmt.Sprintf("%d\n", n.VLAN))
		put(sub, "mac", n.MAC.String()+"\n")
		if n.Hostname != "" {
			put(sub, "hostname", n.Hostname+"\n")
		}
		dev := fmt.Sprintf("../../../devices/pci0000:00/0000:%02x:%02x.%x", n.PCIBDF>>8, n.PCIBDF>>3&0x1f, n.PCIBDF&7)
		if err := os.Symlink(dev, filepath.Join(dir, sub, "device")); err != nil {
			t.Fatal(err)
		}
	}
	for _, tg := range tb.Targets {
		sub := fmt.Sprintf("target%d", tg.Index)
		put(sub, "index", fmt.Sprintf("%d\n", tg.Index))
		put(sub, "flags", fmt.Sprintf("%d\n", tg.Flags))
		ip(sub, "ip-addr", tg.IP)
		put(sub, "port", fmt.Sprintf("%d\n", tg.Port))
		var lun string
		for _, c := range tg.LUNRaw {
			lun += fmt.Sprintf("%x", c)
		}
		put(sub, "lun", lun+"\n")
		put(sub, "chap-type", fmt.Sprintf("%d\n", tg.CHAPType))
		put(sub, "nic-assoc", fmt.Sprintf("%d\n", tg.NIC))
		put(sub, "target-name", tg.Name+"\n")
		if tg.CHAPName != "" {
			put(sub, "chap-name", tg.CHAPName+"\n")
			put(sub, "chap-secret", tg.CHAPSecret+"\n")
		}
		if tg.RevCHAPName != "" {
			put(sub, "rev-chap-name", tg.RevCHAPName+"\n")
			put(sub, "rev-chap-name-secret", tg.RevCHAPSecret+"\n")
		}
	}
}

func TestFindSysfs(t *testing.T) {
	for _, name := range []string{"two-nics-two-targets", "chap-mutual", "vlan-static", "ipv6"} {
		want, err := Parse(fixtureBytes(t, name))
		if err != nil {
			t.Fatal(err)
		}
		root := t.TempDir()
		var loaded []string
		load := func(mod string) error { // stands in for modprobe: the module makes the tree
			loaded = append(loaded, mod)
			writeKernelSysfs(t, root, want)
			return nil
		}
		got, raw, err := Find(FindOptions{Root: root, Mem: zeroMem, LoadModule: load})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(loaded, []string{"iscsi_ibft"}) {
			t.Errorf("%s: loaded %v, want [iscsi_ibft]", name, loaded)
		}
		if got.Source != "sysfs:/sys/firmware/ibft" {
			t.Errorf("%s: source %q", name, got.Source)
		}
		got.Source = ""
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: sysfs table differs:\n got %+v\nwant %+v", name, got, want)
		}
		if again, err := Parse(raw); err != nil || !reflect.DeepEqual(again, want) {
			t.Errorf("%s: returned bytes do not decode to the table: %v", name, err)
		}
	}
}

func TestSysfsLUN(t *testing.T) {
	for s, want := range map[string][8]byte{
		"":                 {},
		"01000000":         {0, 1},
		"412c1020304050ff": {0x41, 0x2c, 0x10, 0x20, 0x30, 0x40, 0x50, 0xff},
	} {
		if got, err := sysfsLUN(s); err != nil || got != want {
			t.Errorf("sysfsLUN(%q) = %x, %v", s, got, err)
		}
	}
	if _, err := sysfsLUN("41c0000000"); err == nil {
		t.Error("ambiguous lun accepted")
	}
}

func TestFindAuto(t *testing.T) {
	// Nothing anywhere.
	root := t.TempDir()
	var logs []string
	_, _, err := Find(FindOptions{Root: root, Mem: zeroMem, Logf: func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) }})
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("empty system: err %v, want ErrNotFound", err)
	}
	if len(logs) < 3 {
		t.Errorf("verbose log has %d lines, want one per step: %q", len(logs), logs)
	}
	// ACPI wins over memory.
	writeFile(t, filepath.Join(root, acpiTablesDir, "iBFT"), fixtureBytes(t, "basic"))
	mem := memWith(map[int][]byte{0x9a000: fixtureBytes(t, "ipxe-like-bios")})
	tb, _, err := Find(FindOptions{Root: root, Mem: mem})
	if err != nil || !strings.HasPrefix(tb.Source, "acpi:") {
		t.Errorf("acpi+mem: %v %v", tb, err)
	}
	// Without ACPI, memory.
	tb, _, err = Find(FindOptions{Root: t.TempDir(), Mem: mem})
	if err != nil || tb.Source != "mem:0x9a000" {
		t.Errorf("mem only: %v %v", tb, err)
	}
	// Unreadable /dev/mem (no root, or no device) is "not there", not fatal.
	tb, _, err = Find(FindOptions{Source: SourceMem, Root: t.TempDir()})
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("missing /dev/mem: %v %v", tb, err)
	}
	if _, _, err := Find(FindOptions{Source: "floppy"}); err == nil {
		t.Error("unknown source accepted")
	}
}

func TestFindFile(t *testing.T) {
	p := filepath.Join(fixtureDir, "chap-mutual.bin")
	tb, _, err := Find(FindOptions{Source: SourceFile, File: p})
	if err != nil || tb.Source != "file:"+p || tb.Targets[0].CHAPSecret != "secretsecret1" {
		t.Errorf("file: %+v %v", tb, err)
	}
	_, _, err = Find(FindOptions{Source: SourceFile, File: filepath.Join(fixtureDir, "broken-checksum.bin")})
	if err == nil || strings.Count(err.Error(), "\n") != 0 || !strings.HasPrefix(err.Error(), "ibft: header at 0x0: checksum") {
		t.Errorf("broken file: %v", err)
	}
}

// holeyMem refuses one page, as /dev/mem may.
type holeyMem struct {
	*bytes.Reader
	hole int64
}

func (h holeyMem) ReadAt(p []byte, off int64) (int, error) {
	if off <= h.hole && h.hole < off+int64(len(p)) {
		return 0, errors.New("operation not permitted")
	}
	return h.Reader.ReadAt(p, off)
}

func TestFindMemSurvivesUnreadablePage(t *testing.T) {
	mem := holeyMem{memWith(map[int][]byte{0x9a000: fixtureBytes(t, "basic")}), 0x81000}
	var logs []string
	tb, _, err := Find(FindOptions{Source: SourceMem, Mem: mem, Logf: func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) }})
	if err != nil || tb.Source != "mem:0x9a000" {
		t.Fatalf("%v %v", tb, err)
	}
	if !strings.Contains(strings.Join(logs, "\n"), "1 of 32 pages in 0x80000-0xa0000 unreadable") {
		t.Errorf("log: %q", logs)
	}
}
