package initproc

import (
	"fmt"
	"os"
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
}

func (m *modules) init() error {
	if m.prober == nil && m.err == nil {
		m.prober, m.err = kmodule.NewProber(kmodule.ProbeOpts{})
		m.tried = map[string]error{}
	}
	return m.err
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
	err := m.prober.Probe(name, params)
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
