package initramfs

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// AddModules adds the named kernel modules, everything they depend on
// (modules.dep) and their soft dependencies (modules.softdep, best effort),
// under lib/modules/<kver>/. kernelRoot is the directory holding
// lib/modules/<kver> (for the unpacked Debian kernel: $ISBOOT_CACHE/kernel/<kver>).
//
// A name is a module name ("virtio_net", "virtio-net") or, failing that, an
// exact alias ("crypto-crc32c"), which adds every module providing it. Names of
// built-in modules are accepted and add nothing.
//
// The archive also gets modules.dep, modules.alias and modules.softdep filtered
// to the modules it holds, and the whole modules.builtin, so that a module
// loader in the guest (u-root's kmodule, modprobe) resolves names and
// modaliases to exactly the modules present. Calling AddModules again for the
// same kver extends the set.
func (a *Archive) AddModules(kernelRoot, kver string, names ...string) error {
	dir := filepath.Join(kernelRoot, "lib", "modules", kver)
	idx, err := loadModIndex(dir)
	if err != nil {
		return err
	}
	if a.mods == nil {
		a.mods = map[string]*modSet{}
	}
	set := a.mods[kver]
	if set == nil {
		set = &modSet{dir: dir, idx: idx, files: map[string]bool{}}
		a.mods[kver] = set
	}
	var want []string
	for _, n := range names {
		rels, err := idx.resolve(n)
		if err != nil {
			return err
		}
		want = append(want, rels...)
	}
	for _, rel := range idx.closure(want) {
		if set.files[rel] {
			continue
		}
		src := filepath.Join(dir, filepath.FromSlash(rel))
		dst := path.Join("lib/modules", kver, plainModule(rel))
		if path.Ext(rel) == ".ko" {
			err = a.AddFile(dst, src, 0o644)
		} else {
			// Compressed modules go in decompressed (see decompressModule).
			var data []byte
			if data, err = decompressModule(src); err == nil {
				err = a.AddBytes(dst, data, 0o644)
			}
		}
		if err != nil {
			return err
		}
		set.files[rel] = true
	}
	return nil
}

// Modules returns the module files the archive holds for kver, sorted, as the
// kernel tree names them (paths relative to lib/modules/<kver>; a compressed one
// keeps its suffix, though the archive holds it decompressed as .ko).
func (a *Archive) Modules(kver string) []string {
	set := a.mods[kver]
	if set == nil {
		return nil
	}
	out := make([]string, 0, len(set.files))
	for rel := range set.files {
		out = append(out, rel)
	}
	sort.Strings(out)
	return out
}

// modSet is the modules added for one kernel version.
type modSet struct {
	dir   string // lib/modules/<kver> on the host
	idx   *modIndex
	files map[string]bool // relative paths of the module files added
}

// metadata returns the filtered module index files for this set.
func (s *modSet) metadata() map[string][]byte {
	names := map[string]bool{}
	for rel := range s.files {
		names[modName(rel)] = true
	}
	dep := filterLines(s.idx.depRaw, func(f []string) bool { return len(f) > 0 && s.files[strings.TrimSuffix(f[0], ":")] })
	return map[string][]byte{
		"modules.dep":     plainModuleDep(dep),
		"modules.alias":   filterLines(s.idx.aliasRaw, func(f []string) bool { return len(f) == 3 && f[0] == "alias" && names[f[2]] }),
		"modules.softdep": filterLines(s.idx.softdepRaw, func(f []string) bool { return len(f) > 1 && f[0] == "softdep" && names[modName(f[1])] }),
		"modules.builtin": s.idx.builtinRaw,
	}
}

func filterLines(raw []byte, keep func(fields []string) bool) []byte {
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if keep(strings.Fields(sc.Text())) {
			out.Write(sc.Bytes())
			out.WriteByte('\n')
		}
	}
	return out.Bytes()
}

// modIndex is a kernel's module index: modules.dep, modules.alias,
// modules.softdep and modules.builtin.
type modIndex struct {
	byName  map[string]string   // module name -> relative path
	deps    map[string][]string // relative path -> relative paths it needs
	aliases map[string][]string // exact alias -> module names
	softdep map[string][]string // module name -> pre/post soft dependency names
	builtin map[string]bool     // module names built into the kernel

	depRaw, aliasRaw, softdepRaw, builtinRaw []byte
}

// modName turns a module path or name into the kernel's canonical name.
func modName(p string) string {
	b := path.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

func loadModIndex(dir string) (*modIndex, error) {
	idx := &modIndex{
		byName: map[string]string{}, deps: map[string][]string{},
		aliases: map[string][]string{}, softdep: map[string][]string{}, builtin: map[string]bool{},
	}
	var err error
	if idx.depRaw, err = os.ReadFile(filepath.Join(dir, "modules.dep")); err != nil {
		return nil, fmt.Errorf("initramfs: modules: %w (run depmod -b)", err)
	}
	for _, f := range fieldsOf(idx.depRaw) {
		rel := strings.TrimSuffix(f[0], ":")
		idx.byName[modName(rel)] = rel
		idx.deps[rel] = f[1:]
	}
	// The other files are optional: a kernel without them just resolves less.
	idx.aliasRaw, _ = os.ReadFile(filepath.Join(dir, "modules.alias"))
	for _, f := range fieldsOf(idx.aliasRaw) {
		if len(f) == 3 && f[0] == "alias" {
			idx.aliases[f[1]] = append(idx.aliases[f[1]], f[2])
		}
	}
	idx.softdepRaw, _ = os.ReadFile(filepath.Join(dir, "modules.softdep"))
	for _, f := range fieldsOf(idx.softdepRaw) {
		if len(f) < 2 || f[0] != "softdep" {
			continue
		}
		for _, d := range f[2:] {
			if d != "pre:" && d != "post:" {
				idx.softdep[modName(f[1])] = append(idx.softdep[modName(f[1])], d)
			}
		}
	}
	idx.builtinRaw, _ = os.ReadFile(filepath.Join(dir, "modules.builtin"))
	for _, f := range fieldsOf(idx.builtinRaw) {
		idx.builtin[modName(f[0])] = true
	}
	return idx, nil
}

// fieldsOf splits a module index file into the fields of its non-comment lines.
func fieldsOf(raw []byte) [][]string {
	var out [][]string
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		out = append(out, f)
	}
	return out
}

// resolve maps a module name or exact alias to module paths. Built-in modules
// resolve to nothing.
func (idx *modIndex) resolve(name string) ([]string, error) {
	n := modName(name)
	if rel, ok := idx.byName[n]; ok {
		return []string{rel}, nil
	}
	if idx.builtin[n] {
		return nil, nil
	}
	var rels []string
	for _, m := range idx.aliases[name] {
		if rel, ok := idx.byName[modName(m)]; ok {
			rels = append(rels, rel)
		} else if !idx.builtin[modName(m)] {
			return nil, fmt.Errorf("initramfs: module %s (alias of %s) is not in modules.dep", m, name)
		}
	}
	if len(rels) == 0 && len(idx.aliases[name]) == 0 {
		return nil, fmt.Errorf("initramfs: no module or alias named %q", name)
	}
	return rels, nil
}

// closure returns want plus all hard and soft dependencies, sorted.
// Soft dependencies that do not resolve are skipped: they are optional.
func (idx *modIndex) closure(want []string) []string {
	seen := map[string]bool{}
	var visit func(rel string)
	visit = func(rel string) {
		if seen[rel] {
			return
		}
		seen[rel] = true
		for _, d := range idx.deps[rel] {
			visit(d)
		}
		for _, s := range idx.softdep[modName(rel)] {
			rels, err := idx.resolve(s)
			if err != nil {
				continue
			}
			for _, r := range rels {
				visit(r)
			}
		}
	}
	for _, rel := range want {
		visit(rel)
	}
	out := make([]string, 0, len(seen))
	for rel := range seen {
		out = append(out, rel)
	}
	sort.Strings(out)
	return out
}
