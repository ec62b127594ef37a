package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/internal/initproc"
	"github.com/isboot/isboot/iscsi"
)

// `isboot serve --ibft FILE` and PID 1 pick the same portals, target, LUN, initiator
// and CHAP for the same table (both plan with bootplan.Make), or both refuse it: every
// fixture, plus tables where target0 and target1 are two paths to one LUN.
func TestServeIBFTPlansLikeTheBoot(t *testing.T) {
	dir := t.TempDir()
	base, err := ibft.Parse(mustRead(t, "../../testdata/ibft/two-nics-two-targets.bin"))
	if err != nil {
		t.Fatal(err)
	}
	// target0 (boot-selected) and target1 name the same LUN: two paths, mutual CHAP.
	paths := *base
	paths.Targets = append([]ibft.Target(nil), base.Targets...)
	for i := range paths.Targets {
		tg := &paths.Targets[i]
		tg.Name, tg.LUN, tg.LUNRaw = "iqn.2026-01.org.isboot:shared", 4, [8]byte{0, 4}
		tg.CHAPType, tg.CHAPName, tg.CHAPSecret = ibft.CHAPMutual, "user", "initiator-secret-1"
		tg.RevCHAPName, tg.RevCHAPSecret = "target", "target-secret-22"
	}
	paths.Targets[0].Flags, paths.Targets[1].Flags = ibft.FlagValid|ibft.FlagBootSelected, ibft.FlagValid
	// A CHAP type past mutual: the boot treats it as mutual, serve used to as one-way.
	oddCHAP := paths
	oddCHAP.Targets = append([]ibft.Target(nil), paths.Targets...)
	oddCHAP.Targets[0].CHAPType = 3
	for name, tb := range map[string]*ibft.Table{"two-paths": &paths, "chap-type-3": &oddCHAP} {
		b, err := ibft.Encode(tb)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".bin"), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	files, _ := filepath.Glob("../../testdata/ibft/*.bin")
	extra, _ := filepath.Glob(filepath.Join(dir, "*.bin"))
	got := map[string][]string{} // file name → serve's portals
	for _, f := range append(files, extra...) {
		name := strings.TrimSuffix(filepath.Base(f), ".bin")
		if strings.HasPrefix(name, "broken-") {
			continue
		}
		t.Run(name, func(t *testing.T) {
			tb, err := ibft.Parse(mustRead(t, f))
			if err != nil {
				t.Fatal(err)
			}
			cl, _ := cmdline.ParseString("")
			boot, bootErr := initproc.MakePlan(cl, tb)

			var stderr bytes.Buffer
			cfg, _, code := parseServeFlags([]string{"--ibft", f, "--listen", "unix:/nowhere"}, io.Discard, &stderr)
			if code >= 0 {
				t.Fatalf("flags rejected: %s", stderr.String())
			}
			serveErr := cfg.fromIBFT(t.Logf)
			if (bootErr == nil) != (serveErr == nil) {
				t.Fatalf("boot: %v; serve: %v", bootErr, serveErr)
			}
			if bootErr != nil {
				return
			}
			if !reflect.DeepEqual(cfg.iscsi, boot.Daemon.Config) {
				// %v prints no secret (Config.String), so a CHAP difference shows only as inequality.
				t.Errorf("serve: %v\nboot:  %v", cfg.iscsi, boot.Daemon.Config)
			}
			got[name] = cfg.iscsi.Portals
		})
	}
	for name, want := range map[string]string{
		"two-nics-two-targets": "192.168.0.10:3261", // target0 is another LUN, not a path
		"two-paths":            "10.0.2.2:3260 192.168.0.10:3261",
	} {
		if p := strings.Join(got[name], " "); p != want {
			t.Errorf("%s: portals %q, want %q", name, p, want)
		}
	}
}

// Flags still win over the iBFT, as the kernel command line does at boot.
func TestServeIBFTFlagsWin(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("flag-secret-123\n"), 0o600)
	cfg, _, code := parseServeFlags([]string{"--ibft", "../../testdata/ibft/chap-mutual.bin", "--listen", "unix:/nowhere",
		"--initiator", "iqn.2026-01.org.isboot:flag", "--chap-user", "flag-user", "--chap-secret-file", secret,
		"--header-digest", "CRC32C"}, io.Discard, os.Stderr)
	if code >= 0 {
		t.Fatal("flags rejected")
	}
	if err := cfg.fromIBFT(t.Logf); err != nil {
		t.Fatal(err)
	}
	c := cfg.iscsi
	if c.InitiatorName != "iqn.2026-01.org.isboot:flag" || c.CHAPUser != "flag-user" || c.CHAPSecret != "flag-secret-123" ||
		c.RevCHAPUser != "" || c.RevCHAPSecret != "" || c.HeaderDigest != iscsi.DigestCRC32C || c.DataDigest != iscsi.DigestAuto || c.TargetName == "" {
		t.Errorf("config %v (digests %v %v)", c, c.HeaderDigest, c.DataDigest)
	}

	// Without --initiator, a table naming none is refused, as the boot refuses it.
	tb, err := ibft.Parse(mustRead(t, "../../testdata/ibft/basic.bin"))
	if err != nil {
		t.Fatal(err)
	}
	tb.Initiator.Name = ""
	b, err := ibft.Encode(tb)
	if err != nil {
		t.Fatal(err)
	}
	noName := filepath.Join(dir, "no-initiator.bin")
	os.WriteFile(noName, b, 0o600)
	cfg, _, _ = parseServeFlags([]string{"--ibft", noName, "--listen", "unix:/nowhere"}, io.Discard, os.Stderr)
	if err := cfg.fromIBFT(t.Logf); err == nil || !strings.Contains(err.Error(), "give --initiator") {
		t.Errorf("no initiator name: %v", err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
