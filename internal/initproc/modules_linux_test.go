package initproc

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/u-root/u-root/pkg/kmodule"
)

// TestModulesLoadInDependencyOrder checks what the loader hands the kernel: the
// dependencies first and without parameters, the module asked for with its own,
// each once, and a failure that names the file.
func TestModulesLoadInDependencyOrder(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "lib/modules/6.1.0-test")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dep := "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko\n" +
		"kernel/fs/jbd2/jbd2.ko:\nkernel/fs/mbcache.ko:\n" +
		"kernel/drivers/block/nbd.ko:\nkernel/drivers/net/bad-nic.ko:\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var calls []string
	m := &modules{
		logf: func(int, string, ...any) {},
		opts: kmodule.ProbeOpts{RootDir: root, KVer: "6.1.0-test", IgnoreProcMods: true},
		load: func(path, params string) error {
			mu.Lock()
			defer mu.Unlock()
			calls = append(calls, strings.TrimSuffix(filepath.Base(path), ".ko")+"("+params+")")
			if strings.Contains(path, "bad") {
				return os.ErrInvalid
			}
			return nil
		},
	}
	if err := m.Load("ext4", ""); err != nil {
		t.Fatal(err)
	}
	if err := m.Load("nbd", "max_part=16 nbds_max=1"); err != nil {
		t.Fatal(err)
	}
	if err := m.Load("ext4", ""); err != nil { // loaded already: not again
		t.Fatal(err)
	}
	if len(calls) != 4 || !slices.Contains(calls[:2], "jbd2()") || !slices.Contains(calls[:2], "mbcache()") ||
		calls[2] != "ext4()" || calls[3] != "nbd(max_part=16 nbds_max=1)" {
		t.Fatalf("loads %q, want jbd2 and mbcache, then ext4, then nbd with its parameters", calls)
	}
	err := m.Load("bad_nic", "")
	if err == nil || !strings.Contains(err.Error(), "load module bad_nic") || !strings.Contains(err.Error(), "bad-nic.ko") {
		t.Fatalf("a failed load gave %v, want an error naming the module and its file", err)
	}
	if err2 := m.Load("bad_nic", ""); err2 == nil || err2.Error() != err.Error() {
		t.Fatalf("a second load of a failed module gave %v, want the first error again", err2)
	}
}

// TestLoadModuleFileRefusesGarbage hands the running kernel a file that is no
// module: finit_module must refuse it with an error, not load anything.
func TestLoadModuleFileRefusesGarbage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("finit_module needs CAP_SYS_MODULE: run as root")
	}
	p := filepath.Join(t.TempDir(), "garbage.ko")
	if err := os.WriteFile(p, []byte("not an ELF module"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := loadModuleFile(p, ""); err == nil {
		t.Fatal("the kernel accepted a file that is no module")
	}
	if err := loadModuleFile(filepath.Join(t.TempDir(), "missing.ko"), ""); !os.IsNotExist(err) {
		t.Fatalf("a missing module gave %v, want not-exist", err)
	}
}
