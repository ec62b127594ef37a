package vm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestIPXEScript(t *testing.T) {
	cases := []struct {
		name string
		fw   Firmware
		ipxe IPXE
		want string
	}{
		{"bios dhcp sanhook", BIOS, IPXE{Target: &SANTarget{Port: 13300, LUN: 1, IQN: "iqn.x:t"}},
			"#!ipxe\ndhcp\nsanhook iscsi:10.0.2.2::13300:1:iqn.x:t\nkernel vmlinuz console=ttyS0\ninitrd initrd.img\nboot\n"},
		{"uefi needs initrd=", UEFI, IPXE{},
			"#!ipxe\ndhcp\nkernel vmlinuz initrd=initrd.img console=ttyS0\ninitrd initrd.img\nboot\n"},
		{"static chap hostname", BIOS, IPXE{
			Static:   &StaticIP{IP: "10.0.2.77", Netmask: "255.255.255.0", Gateway: "10.0.2.2"},
			Hostname: "h", InitiatorIQN: "iqn.x:i",
			Target: &SANTarget{Server: "10.0.2.9", LUN: 0, IQN: "iqn.x:t",
				CHAP: &CHAP{User: "u", Secret: "s", ReverseUser: "ru", ReverseSecret: "rs"}},
		}, "#!ipxe\nset net0/ip 10.0.2.77\nset net0/netmask 255.255.255.0\nset net0/gateway 10.0.2.2\nifopen net0\n" +
			"set hostname h\nset initiator-iqn iqn.x:i\nset username u\nset password s\nset reverse-username ru\n" +
			"set reverse-password rs\nsanhook iscsi:10.0.2.9:::0:iqn.x:t\nkernel vmlinuz console=ttyS0\ninitrd initrd.img\nboot\n"},
	}
	for _, c := range cases {
		got, err := c.ipxe.script(Config{Firmware: c.fw, Cmdline: "console=ttyS0", Initrd: "x"})
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if got != c.want {
			t.Errorf("%s:\n got %q\nwant %q", c.name, got, c.want)
		}
	}
}

func TestIPXEScriptRejects(t *testing.T) {
	for name, p := range map[string]IPXE{
		"space in secret": {Target: &SANTarget{IQN: "iqn.x:t", CHAP: &CHAP{User: "u", Secret: "a b"}}},
		"newline in host": {Hostname: "a\nshell"},
		"bad static ip":   {Static: &StaticIP{IP: "10.0.2"}},
		"no iqn":          {Target: &SANTarget{Port: 1}},
	} {
		if _, err := p.script(Config{Firmware: BIOS}); err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "a b") {
			t.Errorf("%s: error leaks the secret: %v", name, err)
		}
	}
}

func TestBuildArgs(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "bzImage")
	os.WriteFile(kernel, []byte("k"), 0o644)
	v := &VM{dir: dir, cfg: Config{Firmware: BIOS, Kernel: kernel, MemoryMB: 256, CPUs: 1,
		NIC: &NIC{Model: "virtio-net-pci", MAC: "52:54:00:00:00:01"}, HostFwd: []string{"tcp:127.0.0.1:13340-:80"},
		IPXE: IPXE{Target: &SANTarget{IQN: "iqn.x:t", CHAP: &CHAP{User: "u", Secret: "topsecret"}}}}}
	args, err := v.buildArgs()
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Join(args, " ")
	for _, want := range []string{"-accel tcg", "-m 256", "tftp=" + dir + "/tftp,bootfile=boot.ipxe",
		",hostfwd=tcp:127.0.0.1:13340-:80", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,romfile=" + ROMDir + "/pxe-virtio.rom"} {
		if !strings.Contains(line, want) {
			t.Errorf("args lack %q: %s", want, line)
		}
	}
	if strings.Contains(line, "topsecret") {
		t.Error("CHAP secret on QEMU's command line")
	}
	st, err := os.Stat(filepath.Join(dir, "tftp", scriptName))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("script: %v, mode %v; want owner-only", err, st)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "tftp", kernelName)); string(b) != "k" {
		t.Error("kernel not copied into the TFTP root")
	}
}

func TestConsoleWaitFor(t *testing.T) {
	c, err := newConsole(filepath.Join(t.TempDir(), "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c.Write([]byte("boot A=1\n"))
		time.Sleep(20 * time.Millisecond)
		c.Write([]byte("later A=2\n"))
	}()
	ctx := context.Background()
	re := regexp.MustCompile(`A=(\d)`)
	for _, want := range []string{"1", "2"} {
		m, err := c.waitFor(ctx, 5*time.Second, re)
		if err != nil || m[1] != want {
			t.Fatalf("match %v, %v; want A=%s (matches move forward)", m, err, want)
		}
	}
	if _, err := c.waitFor(ctx, 50*time.Millisecond, re); err == nil {
		t.Fatal("matched beyond the output")
	}
	c.setExited(errors.New("killed"))
	if _, err := c.waitFor(ctx, time.Hour, re); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("after exit: %v", err)
	}
}

// The harness's own kernel parameters must reach the kernel: after "--" every word
// is init's, so they go before it.
func TestWithKernelParam(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", "p=1"},
		{"console=ttyS0 quiet", "console=ttyS0 quiet p=1"},
		{"root=/dev/x single -- one two", "root=/dev/x single p=1 -- one two"},
		{"-- one", "p=1 -- one"},
		{"a -- b -- c", "a p=1 -- b -- c"},
	} {
		if got := withKernelParam(c.in, "p=1"); got != c.want {
			t.Errorf("withKernelParam(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
