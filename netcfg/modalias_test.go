package netcfg

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestFnmatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"pci:v00001AF4d*sv*sd*bc*sc*i*", "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", true},
		{"pci:v00001AF4d*sv*sd*bc*sc*i*", "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00", false},
		{"virtio:d00000001v*", "virtio:d00000001v00001AF4", true},
		{"virtio:d00000001v*", "virtio:d00000002v00001AF4", false},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{"x[0-9]y", "x7y", true},
		{"x[!0-9]y", "x7y", false},
		{"x[!0-9]y", "xzy", true},
		{"x[]]y", "x]y", true},
		{"of:N*T*Cfoo/bar*", "of:NnodeT<NULL>Cfoo/bar,baz", true}, // '*' crosses '/' as in fnmatch(3)
		{"*", "", true},
		{"a*", "", false},
		{"a*b*c", "aXbYbZc", true},
		{"a*b*c", "aXbYbZ", false},
	} {
		if got := fnmatch(tc.pattern, tc.name); got != tc.want {
			t.Errorf("fnmatch(%q, %q) = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}

func TestAliasesLookup(t *testing.T) {
	a, err := ReadAliases(strings.NewReader("# Aliases extracted from modules themselves.\n" +
		"alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\n" +
		"alias pci:v00008086d*sv*sd*bc02sc00i* generic_intel\n" +
		"alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\n" +
		"bogus line\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := a.Lookup("pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00")
	if !slices.Equal(got, []string{"e1000", "generic_intel"}) {
		t.Errorf("Lookup = %q, want [e1000 generic_intel] (every match, once, in file order)", got)
	}
	if got := a.Lookup("pci:v000010ECd00008139sv*"); got != nil {
		t.Errorf("Lookup of an unknown device = %q", got)
	}
}

// debianModules returns the root and version of the Debian kernel that make deps
// unpacked, or skips.
func debianModules(t *testing.T) (root, kver string) {
	cache := os.Getenv("ISBOOT_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache/isboot")
	}
	b, err := os.ReadFile(filepath.Join(cache, "kernel/current"))
	if err != nil {
		t.Skipf("no Debian kernel in %s (run make deps): %v", cache, err)
	}
	kver = strings.TrimSpace(string(b))
	return filepath.Join(cache, "kernel", kver), kver
}

// The modaliases are what QEMU's e1000 and virtio-net-pci devices show in sysfs.
const (
	e1000Modalias      = "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00"
	virtioPCIModalias  = "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
	virtioNetModalias  = "virtio:d00000001v00001AF4"
	virtioBlkModalias  = "virtio:d00000002v00001AF4"
	unknownPCIModalias = "pci:v0000FFFEd0000FFFEsv00000000sd00000000bc02sc00i00"
)

func TestDebianAliases(t *testing.T) {
	root, kver := debianModules(t)
	a, err := LoadAliases(root, kver)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		modalias string
		want     []string
	}{
		{e1000Modalias, []string{"e1000"}},
		{virtioPCIModalias, []string{"virtio_pci"}},
		{virtioNetModalias, []string{"virtio_net"}},
		{virtioBlkModalias, []string{"virtio_blk"}},
		{unknownPCIModalias, nil},
	} {
		if got := a.Lookup(tc.modalias); !slices.Equal(got, tc.want) {
			t.Errorf("%s resolves to %q, want %q (of %d aliases)", tc.modalias, got, tc.want, a.Len())
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
