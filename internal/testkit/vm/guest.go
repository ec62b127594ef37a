package vm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/isboot/isboot/initramfs"
)

// builds caches static Go binaries per test binary: several tests (often in
// parallel) boot guests made of the same programs.
var builds struct {
	mu   sync.Mutex
	dir  string
	done map[string]*build
}

type build struct {
	id   int // makes the binary's file name unique
	once sync.Once
	path string
	err  error
}

// BuildGo builds the Go main package pkg statically (CGO_ENABLED=0, -trimpath)
// and returns the binary's path. pkg is what `go build` takes, relative to the
// test's directory (e.g. "./testdata/guestinit", "../../cmd/isboot"). Each
// package and flag set is built once per test binary; RunTests removes them.
func BuildGo(t testing.TB, pkg string, ldflags ...string) string {
	t.Helper()
	key := pkg + "\x00" + strings.Join(ldflags, " ")
	builds.mu.Lock()
	if builds.done == nil {
		builds.done = map[string]*build{}
	}
	b := builds.done[key]
	if b == nil {
		b = &build{id: len(builds.done)}
		builds.done[key] = b
	}
	builds.mu.Unlock()

	b.once.Do(func() {
		dir, err := buildDir()
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, fmt.Sprintf("%d-%s", b.id, filepath.Base(pkg)))
		flags := "-s -w"
		if len(ldflags) > 0 {
			flags += " " + strings.Join(ldflags, " ")
		}
		cmd := exec.Command(goTool(), "build", "-trimpath", "-ldflags="+flags, "-o", b.path, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("vm: go build %s: %v\n%s", pkg, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// Initramfs builds isboot (main.Version set to version) and isboot's initramfs
// around it with mkinitramfs and mkArgs (e.g. "-rescue", "none"), once per test
// binary for each set, and returns the image's path; RunTests removes it.
func Initramfs(t testing.TB, version string, mkArgs ...string) string {
	t.Helper()
	isboot := BuildGo(t, "github.com/isboot/isboot/cmd/isboot", "-X main.Version="+version)
	key := "initramfs\x00" + isboot + "\x00" + strings.Join(mkArgs, "\x00")
	builds.mu.Lock()
	if builds.done == nil {
		builds.done = map[string]*build{}
	}
	b := builds.done[key]
	if b == nil {
		b = &build{id: len(builds.done)}
		builds.done[key] = b
	}
	builds.mu.Unlock()
	b.once.Do(func() {
		dir, err := buildDir()
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, fmt.Sprintf("%d-initramfs.img", b.id))
		args := append([]string{"run", "github.com/isboot/isboot/initramfs/cmd/mkinitramfs", "-isboot", isboot, "-o", b.path}, mkArgs...)
		cmd := exec.Command(goTool(), args...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("vm: mkinitramfs: %v\n%s", err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

func buildDir() (string, error) {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir == "" {
		d, err := os.MkdirTemp("", "isboot-vm-build-")
		if err != nil {
			return "", fmt.Errorf("vm: %w", err)
		}
		builds.dir = d
	}
	return builds.dir, nil
}

// goTool is the go command that runs the tests.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// RunTests runs the package's tests and removes what BuildGo built. Use it as
//
//	func TestMain(m *testing.M) { os.Exit(vm.RunTests(m)) }
func RunTests(m *testing.M) int {
	code := m.Run()
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir != "" {
		os.RemoveAll(builds.dir)
		builds.dir = ""
	}
	return code
}

// GuestArchive returns an initramfs holding what every guest needs before
// its /init runs: /dev/console (the kernel opens it as init's stdio before
// devtmpfs is mounted) and the mount points /proc, /sys and /dev. With init
// set (a host binary, e.g. from BuildGo) it is installed as /init.
func GuestArchive(t testing.TB, init string) *initramfs.Archive {
	t.Helper()
	a := initramfs.New()
	for _, err := range []error{
		a.AddCharDev("dev/console", 0o600, 5, 1),
		a.AddDir("proc", 0o555),
		a.AddDir("sys", 0o555),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if init != "" {
		if err := a.AddFile("init", init, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

// WriteInitrd writes the archive into the test's temporary directory and
// returns its path.
func WriteInitrd(t testing.TB, a *initramfs.Archive) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "initrd.cpio.gz")
	if err := a.WriteFile(p); err != nil {
		t.Fatal(err)
	}
	return p
}
