package initramfs

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// elfModule returns a minimal relocatable x86-64 ELF file whose .modinfo section holds
// the given key=value strings, as a kernel module's does (NUL-separated). With no
// strings it has no .modinfo section at all.
func elfModule(t *testing.T, modinfo ...string) []byte {
	t.Helper()
	var info []byte
	for _, kv := range modinfo {
		info = append(append(info, kv...), 0)
	}
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	infoOff := uint64(ehsize)
	strOff := infoOff + uint64(len(info))
	shOff := (strOff + uint64(len(shstr)) + 7) &^ 7
	sections := []elf.Section64{{}} // the null section
	if len(modinfo) > 0 {
		sections = append(sections, elf.Section64{Name: 1, Type: uint32(elf.SHT_PROGBITS),
			Flags: uint64(elf.SHF_ALLOC), Off: infoOff, Size: uint64(len(info)), Addralign: 1})
	}
	sections = append(sections, elf.Section64{Name: 10, Type: uint32(elf.SHT_STRTAB),
		Off: strOff, Size: uint64(len(shstr)), Addralign: 1})
	h := elf.Header64{
		Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: shOff, Ehsize: ehsize, Shentsize: shentsize,
		Shnum: uint16(len(sections)), Shstrndx: uint16(len(sections) - 1),
	}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS], h.Ident[elf.EI_DATA], h.Ident[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)
	var b bytes.Buffer
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(binary.Write(&b, binary.LittleEndian, h))
	b.Write(info)
	b.Write(shstr)
	b.Write(make([]byte, int(shOff)-b.Len()))
	must(binary.Write(&b, binary.LittleEndian, sections))
	return b.Bytes()
}

// compress returns data compressed the way the file name's suffix says.
func compress(t *testing.T, name string, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	var w interface {
		Write([]byte) (int, error)
		Close() error
	}
	var err error
	switch filepath.Ext(name) {
	case ".ko":
		return data
	case ".gz":
		w = gzip.NewWriter(&b)
	case ".xz":
		w, err = xz.NewWriter(&b)
	case ".zst":
		w, err = zstd.NewWriter(&b)
	default:
		t.Fatalf("compress %s", name)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestModuleFirmware(t *testing.T) {
	dir := t.TempDir()
	mod := elfModule(t, "license=GPL", "firmware=tigon/tg3.bin", "alias=pci:v000014E4d*", "firmware=tigon/tg3_tso.bin", "firmware=")
	want := []string{"tigon/tg3.bin", "tigon/tg3_tso.bin"}
	for _, name := range []string{"tg3.ko", "tg3.ko.gz", "tg3.ko.xz", "tg3.ko.zst"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, compress(t, name, mod), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := ModuleFirmware(p)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("ModuleFirmware(%s) = %q, %v; want %q", name, got, err, want)
		}
	}

	none := filepath.Join(dir, "none.ko")
	if err := os.WriteFile(none, elfModule(t), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := ModuleFirmware(none); err != nil || got != nil {
		t.Errorf("a module without .modinfo: %q, %v", got, err)
	}
	for name, data := range map[string][]byte{"junk.ko": []byte("not ELF"), "junk.ko.xz": []byte("not xz"), "junk.ko.bz2": mod} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := ModuleFirmware(p); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("ModuleFirmware(%s): err %v, want one naming the file", name, err)
		}
	}
}

// TestAddFirmware: the firmware of every module in the archive (dependencies too) that
// the firmware directory has goes in, from where the kernel would take it; the rest is
// reported missing.
func TestAddFirmware(t *testing.T) {
	root, kver := t.TempDir(), "1.2.3-test"
	mods := filepath.Join(root, "lib/modules", kver)
	fw := t.TempDir()
	files := map[string][]byte{
		filepath.Join(mods, "modules.dep"): []byte("kernel/net/nic.ko: kernel/net/nic_core.ko.xz\n" +
			"kernel/net/nic_core.ko.xz:\nkernel/net/other.ko:\n"),
		filepath.Join(mods, "kernel/net/nic.ko"): elfModule(t, "firmware=vendor/nic.bin", "firmware=vendor/absent.bin",
			"firmware=vendor/packed.bin", "firmware=glob/fw-*.bin", "firmware=vendor/dangling.bin"),
		filepath.Join(mods, "kernel/net/nic_core.ko.xz"):   compress(t, ".xz", elfModule(t, "firmware=vendor/nic.bin", "firmware=core/new.bin")),
		filepath.Join(mods, "kernel/net/other.ko"):         elfModule(t, "firmware=vendor/other.bin"),
		filepath.Join(fw, "vendor/nic.bin"):                []byte("nic"),
		filepath.Join(fw, "vendor/other.bin"):              []byte("other"),
		filepath.Join(fw, "vendor/packed.bin.xz"):          []byte("packed"),
		filepath.Join(fw, "glob/fw-1.bin"):                 []byte("1"),
		filepath.Join(fw, "glob/fw-2.bin"):                 []byte("2"),
		filepath.Join(fw, "core/new.bin"):                  []byte("old"),
		filepath.Join(fw, "updates", kver, "core/new.bin"): []byte("new"),
	}
	for p, data := range files {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("nowhere.bin", filepath.Join(fw, "vendor/dangling.bin")); err != nil {
		t.Fatal(err)
	}

	a := New()
	if err := a.AddModules(root, kver, "nic"); err != nil {
		t.Fatal(err)
	}
	got, err := a.AddFirmware(fw, kver)
	if err != nil {
		t.Fatal(err)
	}
	want := []Firmware{
		{"nic", "glob/fw-*.bin", []string{"lib/firmware/glob/fw-1.bin", "lib/firmware/glob/fw-2.bin"}},
		{"nic", "vendor/absent.bin", nil},
		{"nic", "vendor/dangling.bin", nil},
		{"nic", "vendor/nic.bin", []string{"lib/firmware/vendor/nic.bin"}},
		{"nic", "vendor/packed.bin", []string{"lib/firmware/vendor/packed.bin.xz"}},
		{"nic_core", "core/new.bin", []string{"lib/firmware/updates/" + kver + "/core/new.bin"}},
		{"nic_core", "vendor/nic.bin", []string{"lib/firmware/vendor/nic.bin"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("AddFirmware =\n%q\nwant\n%q", got, want)
	}
	_, contents := readArchive(t, build(t, a))
	for p, data := range map[string]string{"lib/firmware/vendor/nic.bin": "nic", "lib/firmware/vendor/packed.bin.xz": "packed",
		"lib/firmware/glob/fw-2.bin": "2", "lib/firmware/updates/" + kver + "/core/new.bin": "new"} {
		if contents[p] != data {
			t.Errorf("%s holds %q, want %q", p, contents[p], data)
		}
	}
	for p := range contents {
		if strings.Contains(p, "other") || p == "lib/firmware/core/new.bin" {
			t.Errorf("%s is in the archive", p)
		}
	}

	// A module added later brings its firmware on the next call; what is in stays.
	if err := a.AddModules(root, kver, "other"); err != nil {
		t.Fatal(err)
	}
	got, err = a.AddFirmware(fw, kver)
	if err != nil || len(got) != len(want)+1 || !reflect.DeepEqual(got[len(got)-1], Firmware{"other", "vendor/other.bin", []string{"lib/firmware/vendor/other.bin"}}) {
		t.Errorf("second AddFirmware = %q, %v", got, err)
	}
	// No firmware directory: everything is missing, nothing fails.
	if got, err := New().AddFirmware("", kver); err != nil || got != nil {
		t.Errorf("AddFirmware on an archive without modules = %q, %v", got, err)
	}
	b := New()
	if err := b.AddModules(root, kver, "nic"); err != nil {
		t.Fatal(err)
	}
	if got, err := b.AddFirmware("", kver); err != nil || len(got) != len(want) || got[0].Files != nil {
		t.Errorf("AddFirmware without a firmware directory = %q, %v", got, err)
	}
}

// TestFirmwareDebianKernel reads the firmware the fleet's NIC drivers declare in the
// kernel `make deps` unpacked.
func TestFirmwareDebianKernel(t *testing.T) {
	root, kver := debianKernel(t)
	fw := t.TempDir()
	if err := os.MkdirAll(filepath.Join(fw, "tigon"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fw, "tigon/tg3.bin"), []byte("tg3"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := New()
	if err := a.AddModules(root, kver, "tg3", "ice", "qede", "e1000e"); err != nil {
		t.Fatal(err)
	}
	got, err := a.AddFirmware(fw, kver)
	if err != nil {
		t.Fatal(err)
	}
	declared := map[string][]string{}
	var found []string
	for _, f := range got {
		declared[f.Module] = append(declared[f.Module], f.Name)
		found = append(found, f.Files...)
	}
	for mod, name := range map[string]string{"tg3": "tigon/tg3.bin", "ice": "intel/ice/ddp/ice.pkg", "qed": "qed/qed_init_values_zipped-8.59.1.0.bin"} {
		if !slices.Contains(declared[mod], name) {
			t.Errorf("%s declares %q, want it to include %s", mod, declared[mod], name)
		}
	}
	if len(declared["e1000e"]) != 0 {
		t.Errorf("e1000e declares %q", declared["e1000e"])
	}
	if !slices.Equal(found, []string{"lib/firmware/tigon/tg3.bin"}) {
		t.Errorf("firmware added: %q", found)
	}
}
