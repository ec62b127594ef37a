package debroot

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// AptSources are the files AptMirror reads, in apt's order.
var AptSources = func() []string {
	files := []string{"/etc/apt/sources.list"}
	for _, pat := range []string{"/etc/apt/sources.list.d/*.list", "/etc/apt/sources.list.d/*.sources"} {
		m, _ := filepath.Glob(pat)
		files = append(files, m...)
	}
	return files
}

// AptMirror returns the archive URI apt is configured to fetch suite from
// (the first deb entry naming it), so debootstrap reaches Debian the same way
// apt does. No host name lives in the code.
func AptMirror(suite string) (string, error) {
	for _, path := range AptSources() {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		var uri string
		if strings.HasSuffix(path, ".sources") {
			uri = mirrorDeb822(b, suite)
		} else {
			uri = mirrorOneLine(b, suite)
		}
		if uri != "" {
			return uri, nil
		}
	}
	return "", fmt.Errorf("debroot: no apt source for suite %q in /etc/apt/sources.list*", suite)
}

// mirrorOneLine reads the classic format: deb [options] URI suite components...
func mirrorOneLine(b []byte, suite string) string {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") { // options, possibly spread over fields
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) == 0 {
				continue
			}
			f = f[1:]
		}
		if len(f) >= 2 && f[1] == suite {
			return f[0]
		}
	}
	return ""
}

// mirrorDeb822 reads the deb822 format: stanzas of Types/URIs/Suites fields.
func mirrorDeb822(b []byte, suite string) string {
	for _, stanza := range bytes.Split(b, []byte("\n\n")) {
		fields := map[string]string{}
		sc := bufio.NewScanner(bytes.NewReader(stanza))
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "#") {
				continue
			}
			if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, " ") {
				fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
			}
		}
		if fields["enabled"] == "no" || !hasWord(fields["types"], "deb") || !hasWord(fields["suites"], suite) {
			continue
		}
		if uris := strings.Fields(fields["uris"]); len(uris) > 0 {
			return uris[0]
		}
	}
	return ""
}

func hasWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}
