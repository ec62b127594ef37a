package daemon

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// deleteTree empties a tree of files, directories and symlinks, counting what it
// removed, and leaves the directory it was given.
func TestDeleteTree(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"bin", "lib/modules/6.1/kernel", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"init", "bin/bb", "lib/modules/6.1/kernel/ext4.ko", "etc/passwd"} {
		if err := os.WriteFile(filepath.Join(root, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("bb", filepath.Join(root, "bin/cat")); err != nil {
		t.Fatal(err)
	}
	// A symlink to a directory is removed, not followed.
	outside := t.TempDir()
	keep := filepath.Join(outside, "keep")
	if err := os.WriteFile(keep, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "out")); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	// 4 files, 2 symlinks, 6 directories (bin, lib, lib/modules, .../6.1, .../kernel, etc).
	if n := deleteTree(fd); n != 12 {
		t.Errorf("deleteTree removed %d entries, want 12", n)
	}
	if left, _ := os.ReadDir(root); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("a file behind a symlink went too: %v", err)
	}
}
