package initproc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"
)

// modules loads kernel modules from the initramfs (lib/modules/<kver> with
// modules.dep), each once.
type modules struct {
	logf   func(level int, format string, a ...any)
	mu     sync.Mutex
	prober *kmodule.Prober
	err    error
	tried  map[string]error
	// opts and load are for tests: the zero opts read the running kernel's
	// modules, a nil load is loadModuleFile.
	opts kmodule.ProbeOpts
	load func(path, params string) error

	// The module Load asked for, its parameters, and what loading it and its
	// dependencies failed with (the prober loads dependencies side by side).
	name, params string
	loadMu       sync.Mutex
	loadErrs     []error
}

func (m *modules) init() error {
	if m.prober == nil && m.err == nil {
		// The prober resolves modules.dep; the loading is ours (loadFile).
		opts := m.opts
		opts.DryRunCB = m.loadFile
		m.prober, m.err = kmodule.NewProber(opts)
		m.tried = map[string]error{}
	}
	return m.err
}

// loadFile loads one module file for the prober, in dependency order: with the
// parameters Load was given if it is the module asked for, without for a dependency.
func (m *modules) loadFile(path string) {
	params := ""
	if sameModule(path, m.name) {
		params = m.params
	}
	load := m.load
	if load == nil {
		load = loadModuleFile
	}
	if err := load(path, params); err != nil {
		m.loadMu.Lock()
		m.loadErrs = append(m.loadErrs, fmt.Errorf("%s: %w", filepath.Base(path), err))
		m.loadMu.Unlock()
	}
}

// loadModuleFile loads path with finit_module(2), so the kernel reads the file
// itself. u-root's kmodule.FileInit would read an uncompressed module whole into
// memory and pass it to init_module(2): for ext4's 2 MB, a growing buffer, its page
// faults and a second copy, all on the boot's one emulated CPU. Compressed modules
// still go through it, as this kernel may not decompress them.
func loadModuleFile(path, params string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if strings.HasSuffix(path, ".ko") {
		err = unix.FinitModule(int(f.Fd()), params, 0)
	} else {
		err = kmodule.FileInit(f, params, 0)
	}
	if err == unix.EEXIST {
		return nil // loaded meanwhile (by the kernel's own request, or an earlier boot step)
	}
	return err
}

// sameModule reports whether the module file path is the module name; the kernel
// treats '-' and '_' in module names alike.
func sameModule(path, name string) bool {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_") == strings.ReplaceAll(name, "-", "_")
}

// Load loads name (and what modules.dep says it needs) with params. Loading a module
// that is already loaded, or built in, succeeds.
func (m *modules) Load(name, params string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.init(); err != nil {
		return fmt.Errorf("modules: %w", err)
	}
	if err, ok := m.tried[name]; ok {
		return err
	}
	t0 := time.Now()
	m.name, m.params, m.loadErrs = name, params, nil
	err := m.prober.Probe(name, params)
	if err == nil {
		err = errors.Join(m.loadErrs...) // Probe returned: no loader runs any more
	}
	if err != nil && isBuiltin(name) {
		err = nil
	}
	if err != nil {
		err = fmt.Errorf("load module %s: %w", name, err)
	} else {
		m.logf(1, "loaded module %s (%v)", strings.TrimSpace(name+" "+params), time.Since(t0).Round(time.Millisecond))
	}
	m.tried[name] = err
	return err
}

// LoadModule is Load without parameters, for callers that take func(string) error.
func (m *modules) LoadModule(name string) error { return m.Load(name, "") }

// isBuiltin reports a module the running kernel already has: built in (with a
// /sys/module entry) or loaded.
func isBuiltin(name string) bool {
	name = strings.ReplaceAll(name, "-", "_")
	var st unix.Stat_t
	return unix.Stat("/sys/module/"+name, &st) == nil
}

// crc32cModules lists the crc32c implementations worth loading, fastest first:
// crc32c_intel only where the CPU has SSE4.2. Elsewhere (QEMU's default CPU model) the
// kernel would read, verify and link the module only to have its init refuse it.
func crc32cModules(flags []string) []string {
	if slices.Contains(flags, "sse4_2") {
		return []string{"crc32c_intel", "crc32c_generic"}
	}
	return []string{"crc32c_generic"}
}

// cpuFlags returns the first CPU's flags from /proc/cpuinfo (nil if unreadable).
func cpuFlags() []string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "flags" {
			return strings.Fields(v)
		}
	}
	return nil
}
