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
	"syscall"
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

// writeResolvConf puts servers into the resolv.conf at path and returns the file it
// wrote. restore puts back what was there before (or removes the file if there was
// none, or the symlink it replaced). logf hears how a symlink or a mount point was
// dealt with:
//   - a symlink is followed and its target written (created if need be), so
//     /etc/resolv.conf -> /run/resolvconf/resolv.conf stays a link;
//   - a symlink into a directory that does not exist (yet), such as
//     /run/systemd/resolve before systemd-resolved ran, is replaced by the file;
//   - a file that is a mount point (a bind mount, as container runtimes make) cannot
//     be renamed onto, so it is rewritten in place (see replaceFile).
func writeResolvConf(path string, servers []netip.Addr, from string, logf func(string, ...any)) (file string, restore func() error, changed bool, err error) {
	file, linkTo, err := resolvDest(path)
	if err != nil {
		return "", nil, false, err
	}
	switch {
	case linkTo != "":
		logf("netcfg: warning: %s links to %s, whose directory does not exist (yet): writing %s in place of the link", path, linkTo, path)
	case file != path:
		logf("netcfg: %s links to %s: writing that", path, file)
	}
	old, err := os.ReadFile(file)
	existed := err == nil && linkTo == ""
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", nil, false, fmt.Errorf("read %s: %w", file, err)
	}
	content := ResolvConf(old, servers, from)
	if existed && bytes.Equal(old, content) {
		return file, nil, false, nil
	}
	if err := replaceFile(file, content, logf); err != nil {
		return "", nil, false, err
	}
	restore = func() error {
		switch {
		case linkTo != "":
			if err := os.Remove(path); err != nil {
				return err
			}
			return os.Symlink(linkTo, path)
		case existed:
			return replaceFile(file, old, logf)
		}
		if err := os.Remove(file); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	return file, restore, true, nil
}

// resolvDest follows path's symlinks to the file to write. When the last link points
// into a directory that does not exist, file is path itself and linkTo what the link
// held (the caller writes in place of the link and says so).
func resolvDest(path string) (file, linkTo string, err error) {
	p := path
	for range 40 {
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			return "", "", fmt.Errorf("read %s: %w", p, err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			return p, "", nil
		}
		dest, err := os.Readlink(p)
		if err != nil {
			return "", "", fmt.Errorf("read %s: %w", p, err)
		}
		if !filepath.IsAbs(dest) {
			dest = filepath.Join(filepath.Dir(p), dest)
		}
		p = dest
	}
	if _, err := os.Lstat(p); err == nil {
		return "", "", fmt.Errorf("read %s: too many levels of symbolic links", path)
	}
	if p == path {
		return path, "", nil // no file yet: create it
	}
	if fi, err := os.Stat(filepath.Dir(p)); err == nil && fi.IsDir() {
		return p, "", nil // a dangling link into a directory that exists: create its target
	}
	link, err := os.Readlink(path)
	if err != nil {
		return "", "", fmt.Errorf("read %s: %w", path, err)
	}
	return path, link, nil
}

// replaceFile gives path the content: atomically (a temporary file renamed over it),
// or, when path is a mount point (EBUSY) or the rename crosses filesystems (EXDEV),
// in place (truncate and write), saying so.
func replaceFile(path string, content []byte, logf func(string, ...any)) error {
	err := writeAtomic(path, content)
	if !errors.Is(err, syscall.EBUSY) && !errors.Is(err, syscall.EXDEV) {
		return err
	}
	logf("netcfg: %s cannot be replaced (%v: a bind mount?): rewriting it in place", path, errors.Unwrap(err))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, werr := f.Write(content)
	if err := errors.Join(werr, f.Close()); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
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
