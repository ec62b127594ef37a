package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/vishvananda/netns"
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

// TestNetcfgAppliesInNamespace runs `isboot netcfg --file` for real, on a thread in a
// fresh network namespace holding a veth with the fixture's MAC, and runs it twice.
func TestNetcfgAppliesInNamespace(t *testing.T) {
	testenv.Require(t, "network namespace test", "ip")
	ns := fmt.Sprintf("isb-nc-cmd-%d", os.Getpid())
	ip := func(args ...string) string {
		out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip -n %s %q: %v\n%s", ns, args, err, out)
		}
		return string(out)
	}
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ip("link", "add", "eth-boot", "address", "52:54:00:12:34:56", "type", "veth", "peer", "name", "eth-peer")
	ip("link", "set", "eth-peer", "up")
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	run := func() (int, string, string) {
		var out, errb bytes.Buffer
		code := -1
		done := make(chan struct{})
		go func() {
			defer close(done)
			runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
			if err := netns.Set(h); err != nil {
				t.Error(err)
				return
			}
			code = netcfgMain([]string{"--file", "../../testdata/ibft/basic.bin", "--cmdline", "", "--resolv-conf", resolv}, &out, &errb)
		}()
		<-done
		return code, out.String(), errb.String()
	}
	code, out, errs := run()
	if code != 0 {
		t.Fatalf("exit %d:\n%s%s", code, out, errs)
	}
	t.Logf("first run:\n%s%s", out, errs)
	for _, want := range []string{"netcfg: added 10.0.2.15/24 to eth-boot", "netcfg: added route default via 10.0.2.2 dev eth-boot"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if a := ip("-4", "addr", "show", "dev", "eth-boot"); !strings.Contains(a, "inet 10.0.2.15/24") {
		t.Errorf("eth-boot addresses:\n%s", a)
	}
	if r := ip("route", "show", "default"); !strings.Contains(r, "default via 10.0.2.2 dev eth-boot") {
		t.Errorf("default route:\n%s", r)
	}
	if b, _ := os.ReadFile(resolv); !strings.Contains(string(b), "nameserver 10.0.2.3\n") {
		t.Errorf("resolv.conf:\n%s", b)
	}
	code, out, errs = run()
	if code != 0 || !strings.Contains(out, "netcfg: eth-boot already configured, nothing changed") {
		t.Errorf("second run: exit %d:\n%s%s", code, out, errs)
	}
}
