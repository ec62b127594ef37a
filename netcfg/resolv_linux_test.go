package netcfg

import (
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/isboot/isboot/internal/testkit/testlog"
)

var testServers = []netip.Addr{netip.MustParseAddr("10.0.2.3")}

const oldResolv = "nameserver 192.0.2.53\n"

// A symlinked resolv.conf: the link stays and its target gets the servers (created if
// its directory exists); a link into a directory that does not exist yet is replaced
// by the file, said in the log, and put back by restore.
func TestWriteResolvConfSymlinks(t *testing.T) {
	for _, tc := range []struct {
		name     string
		setup    func(t *testing.T, root string) // makes root/etc/resolv.conf
		written  string                          // the file written, relative to root
		isLink   bool                            // etc/resolv.conf is still a link
		log      string
		restored string // etc/resolv.conf's content after restore; "" for none
	}{
		{"plain file", func(t *testing.T, root string) { write(t, root, "etc/resolv.conf", oldResolv) },
			"etc/resolv.conf", false, "", oldResolv},
		{"no file", func(t *testing.T, root string) { os.MkdirAll(filepath.Join(root, "etc"), 0o755) },
			"etc/resolv.conf", false, "", ""},
		{"relative link to a file", func(t *testing.T, root string) {
			write(t, root, "run/resolvconf/resolv.conf", oldResolv)
			link(t, root, "../run/resolvconf/resolv.conf", "etc/resolv.conf")
		}, "run/resolvconf/resolv.conf", true, "links to", oldResolv},
		{"absolute link, chained, target not written yet", func(t *testing.T, root string) {
			os.MkdirAll(filepath.Join(root, "run/resolvconf"), 0o755)
			link(t, root, filepath.Join(root, "run/resolvconf/resolv.conf"), "etc/resolv.conf.d")
			link(t, root, "resolv.conf.d", "etc/resolv.conf")
		}, "run/resolvconf/resolv.conf", true, "links to", ""},
		{"link into a directory not there yet", func(t *testing.T, root string) {
			link(t, root, filepath.Join(root, "run/systemd/resolve/stub-resolv.conf"), "etc/resolv.conf")
		}, "etc/resolv.conf", false, "whose directory does not exist (yet)", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			tc.setup(t, root)
			path := filepath.Join(root, "etc/resolv.conf")
			before, _ := os.Readlink(path)
			var logs testlog.Lines
			file, restore, changed, err := writeResolvConf(path, testServers, "iBFT nic0", logs.Printf)
			if err != nil || !changed {
				t.Fatalf("changed %v, err %v", changed, err)
			}
			if want := filepath.Join(root, tc.written); file != want {
				t.Errorf("wrote %s, want %s", file, want)
			}
			if b, _ := os.ReadFile(path); !strings.Contains(string(b), "nameserver 10.0.2.3\n") {
				t.Errorf("%s reads:\n%s", path, b)
			}
			if fi, _ := os.Lstat(path); (fi.Mode()&os.ModeSymlink != 0) != tc.isLink {
				t.Errorf("%s is a link: %v, want %v", path, !tc.isLink, tc.isLink)
			}
			if !strings.Contains(logs.String(), tc.log) {
				t.Errorf("log lacks %q:\n%s", tc.log, logs.String())
			}
			if err := restore(); err != nil {
				t.Fatal(err)
			}
			if after, _ := os.Readlink(path); after != before {
				t.Errorf("after restore %s links to %q, want %q", path, after, before)
			}
			if b, _ := os.ReadFile(path); string(b) != tc.restored {
				t.Errorf("after restore %s reads %q, want %q", path, b, tc.restored)
			}
		})
	}
	root := t.TempDir()
	link(t, root, "b", "a")
	link(t, root, "a", "b")
	if _, _, _, err := writeResolvConf(filepath.Join(root, "a"), testServers, "x", t.Logf); err == nil || !strings.Contains(err.Error(), "too many") {
		t.Errorf("a link loop: %v", err)
	}
}

// A resolv.conf that is a bind mount (as container runtimes make it) cannot be
// renamed onto (EBUSY): it is rewritten in place, and so is what restore puts back.
// A real bind mount, in a mount namespace of the test's own thread.
func TestWriteResolvConfBindMount(t *testing.T) {
	testenv.Require(t, "mount namespace test")
	root := t.TempDir()
	write(t, root, "etc/resolv.conf", "")
	write(t, root, "host-resolv.conf", oldResolv)
	path, src := filepath.Join(root, "etc/resolv.conf"), filepath.Join(root, "host-resolv.conf")
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread and its namespace die with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			t.Errorf("make / private: %v", err)
			return
		}
		if err := unix.Mount(src, path, "", unix.MS_BIND, ""); err != nil {
			t.Errorf("bind mount: %v", err)
			return
		}
		var logs testlog.Lines
		file, restore, changed, err := writeResolvConf(path, testServers, "iBFT nic0", logs.Printf)
		if err != nil || !changed || file != path {
			t.Errorf("wrote %s, changed %v, err %v", file, changed, err)
			return
		}
		if !strings.Contains(logs.String(), "rewriting it in place") {
			t.Errorf("log:\n%s", logs.String())
		}
		// Written through the mount: the bind mount's source holds it.
		if b, _ := os.ReadFile(src); !strings.Contains(string(b), "nameserver 10.0.2.3\n") || !strings.Contains(string(b), oldResolv) {
			t.Errorf("the mounted file reads:\n%s", b)
		}
		if err := restore(); err != nil {
			t.Error(err)
		}
		if b, _ := os.ReadFile(src); string(b) != oldResolv {
			t.Errorf("after restore: %q", b)
		}
	}()
	<-done
}

func write(t *testing.T, root, name, content string) {
	t.Helper()
	p := filepath.Join(root, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func link(t *testing.T, root, to, name string) {
	t.Helper()
	p := filepath.Join(root, name)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.Symlink(to, p); err != nil {
		t.Fatal(err)
	}
}
