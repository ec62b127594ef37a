package initramfs

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Firmware is one firmware file a module declares.
type Firmware struct {
	Module string // the module declaring it, e.g. "tg3"
	Name   string // as declared, relative to the firmware directory: "tigon/tg3.bin"
	// Files are the archive paths added for it ("lib/firmware/tigon/tg3.bin"); none when
	// the firmware directory lacks it. A declared name may be a glob (brcmfmac's are).
	Files []string
}

// AddFirmware adds under lib/firmware the firmware that the modules added for kver
// declare (their modinfo firmware= entries) and that fwDir (the host's /lib/firmware)
// holds. A name is looked up where the kernel's loader looks, in order: updates/<kver>,
// updates, <kver>, then fwDir itself, each also with the .xz and .zst suffixes its
// loader may decompress. It returns every declared file, found or not, sorted by module
// and name; a driver whose firmware is missing may still work (many only want it for
// some chips, or fall back to what is in flash). Calling it again after AddModules adds
// what the new modules declare.
func (a *Archive) AddFirmware(fwDir, kver string) ([]Firmware, error) {
	set := a.mods[kver]
	if set == nil {
		return nil, nil
	}
	var out []Firmware
	for _, rel := range a.Modules(kver) {
		names, err := ModuleFirmware(filepath.Join(set.dir, filepath.FromSlash(rel)))
		if err != nil {
			return nil, err
		}
		for _, name := range names {
			fw := Firmware{Module: modName(rel), Name: name}
			for _, src := range findFirmware(fwDir, kver, name) {
				dst := path.Join("lib/firmware", filepath.ToSlash(src.rel))
				fw.Files = append(fw.Files, dst)
				if _, ok := a.entries[dst]; ok {
					continue // two modules share it, or an earlier call added it
				}
				if err := a.AddFile(dst, src.path, 0o644); err != nil {
					return nil, err
				}
			}
			out = append(out, fw)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Module != out[j].Module {
			return out[i].Module < out[j].Module
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

type firmwareFile struct{ path, rel string }

// findFirmware returns the files in fwDir that serve the declared name, from the first
// of the kernel's search directories that has any.
func findFirmware(fwDir, kver, name string) []firmwareFile {
	if fwDir == "" || name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "..") {
		return nil
	}
	for _, sub := range []string{filepath.Join("updates", kver), "updates", kver, ""} {
		var found []firmwareFile
		for _, suffix := range []string{"", ".xz", ".zst"} {
			matches, _ := filepath.Glob(filepath.Join(fwDir, sub, filepath.FromSlash(name)+suffix))
			for _, m := range matches {
				if st, err := os.Stat(m); err != nil || !st.Mode().IsRegular() {
					continue // a dangling symlink serves nothing
				}
				rel, err := filepath.Rel(fwDir, m)
				if err != nil {
					continue
				}
				found = append(found, firmwareFile{m, rel})
			}
			if len(found) > 0 {
				return found
			}
		}
	}
	return nil
}

// ModuleFirmware returns the firmware= entries of a kernel module's .modinfo section, in
// the order the module declares them. The module may be compressed (.ko.gz, .ko.xz,
// .ko.zst, as kmod and u-root's kmodule load them).
func ModuleFirmware(file string) ([]string, error) {
	info, err := modinfo(file)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, kv := range info {
		if v, ok := strings.CutPrefix(kv, "firmware="); ok && v != "" {
			out = append(out, v)
		}
	}
	return out, nil
}

// modinfo returns the key=value strings of a module's .modinfo section.
func modinfo(file string) ([]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("initramfs: modinfo: %w", err)
	}
	defer f.Close()
	var ra io.ReaderAt = f
	if ext := path.Ext(file); ext != ".ko" {
		var r io.Reader
		switch ext {
		case ".gz":
			r, err = gzip.NewReader(f)
		case ".xz":
			r, err = xz.NewReader(f)
		case ".zst":
			var d *zstd.Decoder
			if d, err = zstd.NewReader(f); err == nil {
				defer d.Close()
				r = d
			}
		default:
			return nil, fmt.Errorf("initramfs: modinfo: %s: not a module (.ko, .ko.gz, .ko.xz, .ko.zst)", file)
		}
		if err != nil {
			return nil, fmt.Errorf("initramfs: modinfo: %s: %w", file, err)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			return nil, fmt.Errorf("initramfs: modinfo: %s: %w", file, err)
		}
		ra = bytes.NewReader(b)
	}
	e, err := elf.NewFile(ra)
	if err != nil {
		return nil, fmt.Errorf("initramfs: modinfo: %s: %w", file, err)
	}
	s := e.Section(".modinfo")
	if s == nil {
		return nil, nil // a module declaring nothing
	}
	data, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf("initramfs: modinfo: %s: %w", file, err)
	}
	var out []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		if len(kv) > 0 {
			out = append(out, string(kv))
		}
	}
	return out, nil
}
