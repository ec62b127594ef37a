package vm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/isboot/isboot/internal/testkit/testenv"
)

// Require skips the test under -short, when not root, or when QEMU is missing:
// the VM tier runs in `make test` as root with `make deps` done.
func Require(t testing.TB) {
	t.Helper()
	testenv.Require(t, "VM test", QEMU)
}

// Kernel is an unpacked kernel package.
type Kernel struct {
	Version string // e.g. 6.1.0-56-amd64
	Root    string // holds boot/ and lib/modules/<Version>
	Image   string // the bzImage
}

// CacheDir is $ISBOOT_CACHE, default ~/.cache/isboot (where make deps puts things).
func CacheDir() string {
	if d := os.Getenv("ISBOOT_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/root"
	}
	return filepath.Join(home, ".cache", "isboot")
}

// DebianKernel returns the kernel `make deps` unpacked into the cache, or
// skips the test if there is none.
func DebianKernel(t testing.TB) Kernel {
	t.Helper()
	base := filepath.Join(CacheDir(), "kernel")
	b, err := os.ReadFile(filepath.Join(base, "current"))
	if err != nil {
		t.Skipf("VM test: no kernel in %s (run make deps): %v", base, err)
	}
	v := strings.TrimSpace(string(b))
	k := Kernel{Version: v, Root: filepath.Join(base, v)}
	k.Image = filepath.Join(k.Root, "boot", "vmlinuz-"+v)
	if _, err := os.Stat(k.Image); err != nil {
		t.Skipf("VM test: %v (run make deps)", err)
	}
	return k
}
