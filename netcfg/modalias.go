package netcfg

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Aliases is a parsed modules.alias: device modalias patterns and the module each
// pattern belongs to, in file order.
type Aliases struct {
	patterns []string
	modules  []string
}

// ReadAliases parses modules.alias ("alias <pattern> <module>" lines).
func ReadAliases(r io.Reader) (*Aliases, error) {
	a := &Aliases{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[0] != "alias" {
			continue // comments and blank lines
		}
		a.patterns = append(a.patterns, f[1])
		a.modules = append(a.modules, f[2])
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("modules.alias: %w", err)
	}
	return a, nil
}

// LoadAliases reads <root>/lib/modules/<kver>/modules.alias (or under /usr/lib).
func LoadAliases(root, kver string) (*Aliases, error) {
	var firstErr error
	for _, dir := range []string{"lib/modules", "usr/lib/modules"} {
		f, err := os.Open(filepath.Join(root, "/", dir, kver, "modules.alias"))
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		defer f.Close()
		return ReadAliases(f)
	}
	return nil, firstErr
}

// Len is the number of aliases.
func (a *Aliases) Len() int { return len(a.patterns) }

// Lookup returns the modules whose alias pattern matches modalias, without repeats,
// in file order (modprobe loads every match).
func (a *Aliases) Lookup(modalias string) []string {
	var mods []string
	for i, p := range a.patterns {
		if fnmatch(p, modalias) && !slices.Contains(mods, a.modules[i]) {
			mods = append(mods, a.modules[i])
		}
	}
	return mods
}

// fnmatch is fnmatch(3) without flags, as kmod matches aliases: '*', '?', '[...]' with
// ranges and '!'/'^' negation. Unlike path.Match, '*' also matches '/'.
func fnmatch(pattern, name string) bool {
	// Iterative matching with backtracking to the last '*': linear in practice.
	px, nx := 0, 0
	starP, starN := -1, 0
	for nx < len(name) {
		if px < len(pattern) {
			switch c := pattern[px]; c {
			case '*':
				starP, starN = px, nx
				px++
				continue
			case '?':
				px++
				nx++
				continue
			case '[':
				if ok, width := matchClass(pattern[px:], name[nx]); width > 0 {
					if ok {
						px += width
						nx++
						continue
					}
				} else if name[nx] == '[' { // unterminated class: literal '['
					px++
					nx++
					continue
				}
			case '\\':
				if px+1 < len(pattern) && pattern[px+1] == name[nx] {
					px += 2
					nx++
					continue
				}
			default:
				if c == name[nx] {
					px++
					nx++
					continue
				}
			}
		}
		if starP < 0 {
			return false
		}
		starN++
		px, nx = starP+1, starN
	}
	for px < len(pattern) && pattern[px] == '*' {
		px++
	}
	return px == len(pattern)
}

// matchClass matches c against the bracket expression at the start of p. width is the
// length of the expression, 0 if it is not terminated.
func matchClass(p string, c byte) (ok bool, width int) {
	i := 1
	negate := i < len(p) && (p[i] == '!' || p[i] == '^')
	if negate {
		i++
	}
	first := true
	for ; i < len(p); i++ {
		if p[i] == ']' && !first {
			return ok != negate, i + 1
		}
		first = false
		lo := p[i]
		if i+2 < len(p) && p[i+1] == '-' && p[i+2] != ']' {
			if lo <= c && c <= p[i+2] {
				ok = true
			}
			i += 2
			continue
		}
		if lo == c {
			ok = true
		}
	}
	return false, 0
}
