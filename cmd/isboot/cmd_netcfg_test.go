package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNetcfgDryRunFixtures(t *testing.T) {
	fixtures, err := filepath.Glob("../../testdata/ibft/*.bin")
	if err != nil || len(fixtures) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, f := range fixtures {
		name := strings.TrimSuffix(filepath.Base(f), ".bin")
		t.Run(name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := netcfgMain([]string{"--file", f, "--dry-run", "--cmdline", ""}, &out, &errb)
			if strings.HasPrefix(name, "broken-") {
				if code != 1 || out.Len() != 0 || strings.Count(errb.String(), "\n") != 1 {
					t.Errorf("broken table: exit %d, stdout %q, stderr %q; want 1, nothing, one line", code, out.String(), errb.String())
				}
				return
			}
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
			for _, want := range []string{"network plan for iBFT nic", "link:", "address:", "dns:", "hostname:"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("plan lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}

func TestNetcfgDryRunDetails(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--file", "../../testdata/ibft/vlan-static.bin"}, 0, "vlan:     100: create <link>.100"},
		{[]string{"--file", "../../testdata/ibft/two-nics-two-targets.bin"}, 0, "network plan for iBFT nic1"},
		{[]string{"--file", "../../testdata/ibft/two-nics-two-targets.bin", "--nic", "0"}, 0, "network plan for iBFT nic0"},
		{[]string{"--file", "../../testdata/ibft/basic.bin", "--nic", "7"}, 1, "no nic7 (it has: nic0)"},
		{[]string{"--file", "../../testdata/ibft/basic.bin", "--cmdline", "testdata-netroot"}, 0, "192.0.2.99 via 10.0.2.2"},
		{[]string{"extra"}, 2, "usage: isboot netcfg"},
	} {
		var out, errb bytes.Buffer
		args := append([]string{"--dry-run"}, tc.args...)
		if !strings.Contains(strings.Join(tc.args, " "), "--cmdline") {
			args = append(args, "--cmdline", "")
		} else {
			dir := t.TempDir()
			cl := filepath.Join(dir, "cmdline")
			if err := os.WriteFile(cl, []byte("quiet netroot=iscsi:192.0.2.99::3260:1:iqn.2026-01.org.isboot:disk9 isboot.dhcp\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			args[len(args)-1] = cl
		}
		code := netcfgMain(args, &out, &errb)
		if code != tc.code || !strings.Contains(out.String()+errb.String(), tc.want) {
			t.Errorf("netcfg %q: exit %d, output:\n%s%s\nwant exit %d and %q", args, code, out.String(), errb.String(), tc.code, tc.want)
		}
	}
}
