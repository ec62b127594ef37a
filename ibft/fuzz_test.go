package ibft

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// FuzzParse: hostile bytes never panic, and a table that parses encodes to bytes that
// parse to an equal table. Seeds: every fixture, synthetic and captured.
func FuzzParse(f *testing.F) {
	for _, fx := range fixtures {
		f.Add(fx.bytes())
	}
	bins, _ := filepath.Glob(filepath.Join(fixtureDir, "*.bin"))
	for _, p := range bins {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		t1, err := Parse(b)
		if err != nil {
			if t1 != nil || strings.Contains(err.Error(), "\n") {
				t.Fatalf("bad failure: table %v, error %q", t1, err)
			}
			return
		}
		b2, err := Encode(t1)
		if err != nil {
			// Many control slots may point at one structure; re-encoded one by one
			// they can outgrow 16-bit offsets. Nothing else may fail.
			if !strings.Contains(err.Error(), "does not fit 16-bit offsets") {
				t.Fatalf("Encode(Parse(b)): %v", err)
			}
			return
		}
		t2, err := Parse(b2)
		if err != nil {
			t.Fatalf("Parse(Encode(Parse(b))): %v", err)
		}
		if !reflect.DeepEqual(t1, t2) {
			t.Fatalf("round trip changed the table:\n%+v\n%+v", t1, t2)
		}
	})
}
