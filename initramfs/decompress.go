package initramfs

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// A kernel's modules may come compressed (.ko.xz, .ko.gz, .ko.zst: Debian 12's 6.12
// kernel, Debian 13, Fedora, Ubuntu). The archive holds them decompressed, as .ko:
// in the guest, a compressed module is decompressed by the loader on the boot's CPU.
// u-root's kmodule does that in Go, and under TCG the 6.12 kernel's ext4 (and its
// dependencies) took 2.8 s to load that way, /init → exec 3.9-4.1 s against 1.2-1.4 s
// for the same boot from plain modules (docs/performance.md). The archive is
// compressed as a whole (LZ4), and the kernel unpacks it in C before /init.

// plainModule is rel with its compression suffix, if any, taken off.
func plainModule(rel string) string {
	for _, ext := range []string{".xz", ".gz", ".zst"} {
		if strings.HasSuffix(rel, ".ko"+ext) {
			return strings.TrimSuffix(rel, ext)
		}
	}
	return rel
}

// plainModuleDep rewrites modules.dep lines to name each module as the archive
// holds it.
func plainModuleDep(dep []byte) []byte {
	var out bytes.Buffer
	for _, line := range strings.SplitAfter(string(dep), "\n") {
		if line == "" {
			continue
		}
		fields := strings.Fields(line)
		for i, f := range fields {
			if i == 0 {
				fields[i] = plainModule(strings.TrimSuffix(f, ":")) + ":"
			} else {
				fields[i] = plainModule(f)
			}
		}
		out.WriteString(strings.Join(fields, " "))
		out.WriteByte('\n')
	}
	return out.Bytes()
}

// decompressModule reads the compressed module file src whole.
func decompressModule(src string) ([]byte, error) {
	f, err := os.Open(src)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader
	switch ext := path.Ext(src); ext {
	case ".xz":
		r, err = xz.NewReader(f)
	case ".gz":
		r, err = gzip.NewReader(f)
	case ".zst":
		var d *zstd.Decoder
		if d, err = zstd.NewReader(f); err == nil {
			defer d.Close()
			r = d
		}
	default:
		return nil, fmt.Errorf("initramfs: module %s: not a .ko, .ko.gz, .ko.xz or .ko.zst", src)
	}
	if err != nil {
		return nil, fmt.Errorf("initramfs: module %s: %w", src, err)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("initramfs: module %s: %w", src, err)
	}
	return data, nil
}
