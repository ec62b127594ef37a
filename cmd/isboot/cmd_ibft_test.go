package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const ibftFixtures = "../../testdata/ibft"

func runIbftCmd(args ...string) (stdout, stderr string, code int) {
	var o, e bytes.Buffer
	code = ibftMain(args, &o, &e)
	return o.String(), e.String(), code
}

// TestIbftJSONMatchesGolden: `isboot ibft --file F --json` prints the fixture's expected
// object (with the source naming the file) for every valid fixture.
func TestIbftJSONMatchesGolden(t *testing.T) {
	jsons, _ := filepath.Glob(filepath.Join(ibftFixtures, "*.json"))
	if len(jsons) == 0 {
		t.Fatal("no fixtures")
	}
	for _, j := range jsons {
		bin := strings.TrimSuffix(j, ".json") + ".bin"
		out, errOut, code := runIbftCmd("--file", bin, "--json")
		if code != 0 {
			t.Errorf("%s: exit %d: %s", bin, code, errOut)
			continue
		}
		var got, want map[string]any
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("%s: output is not one JSON object: %v\n%s", bin, err, out)
		}
		w, _ := os.ReadFile(j)
		if err := json.Unmarshal(w, &want); err != nil {
			t.Fatal(err)
		}
		if got["source"] != "file:"+bin {
			t.Errorf("%s: source %v", bin, got["source"])
		}
		want["source"] = got["source"]
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: JSON differs:\n%s", bin, out)
		}
	}
}

func TestIbftSecrets(t *testing.T) {
	bin := filepath.Join(ibftFixtures, "chap-mutual.bin")
	out, _, code := runIbftCmd("--file", bin, "--json")
	if code != 0 || strings.Contains(out, "secretsecret1") || strings.Count(out, `"***"`) != 2 {
		t.Errorf("masked JSON (exit %d):\n%s", code, out)
	}
	out, _, _ = runIbftCmd("--file", bin)
	if strings.Contains(out, "secretsecret1") || !strings.Contains(out, "hw.ibft.chap_secret: ***\n") {
		t.Errorf("masked keys:\n%s", out)
	}
	out, _, _ = runIbftCmd("--file", bin, "--json", "--show-secrets")
	if !strings.Contains(out, `"chap_secret": "secretsecret1"`) || !strings.Contains(out, `"rev_chap_secret": "targetsecret2"`) {
		t.Errorf("--show-secrets JSON:\n%s", out)
	}
}

func TestIbftKeyLines(t *testing.T) {
	out, _, code := runIbftCmd("--file", filepath.Join(ibftFixtures, "ipxe-like-bios.bin"))
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, line := range []string{
		"hw.ibft.initiator_name: iqn.2010-04.org.ipxe:52540012345600",
		"hw.ibft.target_name: iqn.2026-01.org.isboot:disk1",
		"hw.ibft.target_address: 10.0.2.2",
		"hw.ibft.target_port: 3260",
		"hw.ibft.target_lun: 1",
		"hw.ibft.nic_prefix: 24",
		"hw.ibft.nic_gateway: 10.0.2.2",
		"hw.ibft.initiator_address: 10.0.2.15",
	} {
		if !strings.Contains(out, line+"\n") {
			t.Errorf("missing %q in:\n%s", line, out)
		}
	}
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if !strings.HasPrefix(l, "hw.ibft.") || !strings.Contains(l, ": ") {
			t.Errorf("not a seed-style line: %q", l)
		}
	}
}

// TestIbftBroken: every broken fixture exits non-zero with exactly its one-line error.
func TestIbftBroken(t *testing.T) {
	errs, _ := filepath.Glob(filepath.Join(ibftFixtures, "broken-*.err"))
	if len(errs) == 0 {
		t.Fatal("no broken fixtures")
	}
	for _, e := range errs {
		want, _ := os.ReadFile(e)
		bin := strings.TrimSuffix(e, ".err") + ".bin"
		out, errOut, code := runIbftCmd("--file", bin, "--json")
		if code == 0 || out != "" {
			t.Errorf("%s: exit %d, stdout %q", bin, code, out)
		}
		// One line, in the format every subcommand shares, naming the defect.
		wantLine := "isboot " + strings.TrimSuffix(string(want), "\n") + " (file:" + bin + ")\n"
		if errOut != wantLine {
			t.Errorf("%s: stderr %q, want %q", bin, errOut, wantLine)
		}
	}
}

func TestIbftUsage(t *testing.T) {
	if _, _, code := runIbftCmd("--bogus"); code != 2 {
		t.Errorf("unknown flag: exit %d, want 2", code)
	}
	if _, errOut, code := runIbftCmd("--source", "floppy"); code != 1 || strings.Count(errOut, "\n") != 1 {
		t.Errorf("unknown source: exit %d, %q", code, errOut)
	}
}
