package netcfg

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

const resolvHeader = "# nameservers from the "

// ResolvConf returns the resolv.conf content with servers first (the resolver uses at
// most three) followed by the old content, minus lines this function wrote before and
// duplicates of servers, so applying it twice gives the same file.
func ResolvConf(old []byte, servers []netip.Addr, from string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s%s, written by isboot\n", resolvHeader, from)
	ours := map[string]bool{}
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
		ours[s.String()] = true
	}
	for _, line := range strings.SplitAfter(string(old), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if strings.HasPrefix(line, resolvHeader) || len(f) == 2 && f[0] == "nameserver" && ours[f[1]] {
			continue
		}
		b.WriteString(line)
		if !strings.HasSuffix(line, "\n") {
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// writeResolvConf puts servers into the resolv.conf at path, atomically. restore puts
// back what was there before (or removes the file if there was none).
func writeResolvConf(path string, servers []netip.Addr, from string) (restore func() error, changed bool, err error) {
	old, err := os.ReadFile(path)
	existed := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("read %s: %w", path, err)
	}
	content := ResolvConf(old, servers, from)
	if existed && bytes.Equal(old, content) {
		return nil, false, nil
	}
	if err := writeAtomic(path, content); err != nil {
		return nil, false, err
	}
	restore = func() error {
		if existed {
			return writeAtomic(path, old)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	return restore, true, nil
}

func writeAtomic(path string, content []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	f, err := os.CreateTemp(dir, ".resolv-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, werr := f.Write(content)
	if err := errors.Join(werr, f.Chmod(0o644), f.Close()); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
