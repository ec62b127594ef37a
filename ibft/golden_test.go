package ibft

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/ibft fixtures and expectations")

const fixtureDir = "../testdata/ibft"

// TestGolden decodes every table in testdata/ibft (the synthetic ones above and the
// captures from real iPXE) and compares with its .json, or for broken ones its .err.
func TestGolden(t *testing.T) {
	generated := map[string][]byte{}
	for _, f := range fixtures {
		generated[f.name+".bin"] = f.bytes()
	}
	if *update {
		for name, b := range generated {
			if err := os.WriteFile(filepath.Join(fixtureDir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	bins, _ := filepath.Glob(filepath.Join(fixtureDir, "*.bin"))
	if len(bins) < len(fixtures) {
		t.Fatalf("found %d fixtures in %s, want at least %d (run with -update)", len(bins), fixtureDir, len(fixtures))
	}
	for _, path := range bins {
		name := filepath.Base(path)
		t.Run(strings.TrimSuffix(name, ".bin"), func(t *testing.T) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if g, ok := generated[name]; ok && !bytes.Equal(g, b) {
				t.Errorf("%s differs from what its generator builds (run with -update)", name)
			}
			got, want := describe(b), ""
			stem := strings.TrimSuffix(path, ".bin")
			expect := stem + ".json"
			if strings.HasPrefix(name, "broken-") {
				expect = stem + ".err"
			}
			if *update {
				if _, synthetic := generated[name]; synthetic || !exists(expect) {
					if err := os.WriteFile(expect, []byte(got), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			w, err := os.ReadFile(expect)
			if err != nil {
				t.Fatalf("no expectation for %s: %v (run with -update and review it)", name, err)
			}
			if want = string(w); got != want {
				t.Errorf("%s:\ngot:\n%s\nwant:\n%s", name, got, want)
			}
		})
	}
}

// describe is what a fixture's expectation file holds: the JSON with secrets masked,
// or the error line, each ending in a newline.
func describe(b []byte) string {
	tb, err := Parse(b)
	if err != nil {
		return err.Error() + "\n"
	}
	j, err := tb.JSON(false)
	if err != nil {
		return "json: " + err.Error() + "\n"
	}
	return string(j) + "\n"
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// TestBrokenFixturesAreTypedErrors checks each defect is one *Error line naming a structure.
func TestBrokenFixturesAreTypedErrors(t *testing.T) {
	for _, f := range fixtures {
		if !strings.HasPrefix(f.name, "broken-") {
			continue
		}
		_, err := Parse(f.bytes())
		var e *Error
		if !errors.As(err, &e) {
			t.Errorf("%s: error %v is not an *ibft.Error", f.name, err)
			continue
		}
		if strings.Contains(err.Error(), "\n") || e.Struct == "" {
			t.Errorf("%s: error %q is not one line naming a structure", f.name, err)
		}
	}
}

// TestRoundTrip: Encode(Parse(b)) decodes to the same Table for every valid fixture,
// and reproduces the bytes exactly for the ones Encode made.
func TestRoundTrip(t *testing.T) {
	for _, f := range fixtures {
		b := f.bytes()
		t1, err := Parse(b)
		if err != nil {
			continue
		}
		b2, err := Encode(t1)
		if err != nil {
			t.Errorf("%s: encode: %v", f.name, err)
			continue
		}
		t2, err := Parse(b2)
		if err != nil {
			t.Errorf("%s: re-parse: %v", f.name, err)
			continue
		}
		if !reflect.DeepEqual(t1, t2) {
			t.Errorf("%s: round trip changed the table:\n%+v\n%+v", f.name, t1, t2)
		}
		if f.name != "ipxe-like-bios" && !bytes.Equal(b, b2) {
			t.Errorf("%s: Encode(Parse(b)) differs from b", f.name)
		}
	}
}
