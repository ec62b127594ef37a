// Package dhcpboot boots QEMU without an iBFT (no -acpitable, no iPXE): the kernel
// command line alone, in dracut's dialect, names the network (ip=) and the target
// (netroot=), and the boot reaches the real root through tgtd on the host.
package dhcpboot

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/testkit/rootimg"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// This package's slice of the shared ranges: TCP 13570-13579, tgtd control ports 67-68.
const (
	portLo, portHi = 13570, 13579
	ctlPort        = 67
)

func TestMain(m *testing.M) { os.Exit(vm.RunTests(m)) }

// image builds isboot and its initramfs (without the rescue tools) once.
func image(t *testing.T) string {
	t.Helper()
	return vm.Initramfs(t, "dhcpboot", "-rescue", "none")
}

// realInit prints the status file and the hostname, proves the root writable through
// the LUN, and powers off.
const realInit = `#!/bin/sh
echo "ISBOOT-ROOT-UP"
echo "ISBOOT-HOSTNAME $(cat /proc/sys/kernel/hostname)"
mount -o remount,rw / && echo ok > /isboot-marker && sync && echo ISBOOT-WROTE
echo ISBOOT-STATUS-BEGIN
cat /run/isboot/status
echo ISBOOT-STATUS-END
echo ISBOOT-ROOT-DONE
poweroff -f
`

// TestBootWithoutIBFT boots twice with no iBFT at all: ip=dhcp against QEMU's own
// DHCP server, then a static ip= with rd.iscsi.firmware=0 and a hostname. Both log
// in to tgtd through netroot= and switch to the real root; the DHCP boot's status
// file shows the lease the daemon keeps. A third boot has an iBFT whose NIC came
// from DHCP: its lease is confirmed and kept the same way.
func TestBootWithoutIBFT(t *testing.T) {
	vm.Require(t)
	initrd := image(t)
	k := vm.DebianKernel(t)
	disk := filepath.Join(t.TempDir(), "disk.img")
	if err := rootimg.Make(disk, rootimg.Options{Init: realInit, ESP: true}); err != nil {
		t.Fatal(err)
	}
	tgt := testtarget.StartTgtd(t, testtarget.TgtdOptions{Port: testtarget.FreePort(t, portLo, portHi), ControlPort: ctlPort, Backing: disk})
	_, p, _ := net.SplitHostPort(tgt.Addr())
	port, _ := strconv.Atoi(p)
	netroot := fmt.Sprintf("netroot=iscsi:%s::%d:%d:%s", vm.HostAddr, port, tgt.LUNNumber(), tgt.TargetIQN())

	for _, tc := range []struct {
		name    string
		cmdline string
		console []string          // regexps, in order
		status  map[string]string // status keys and values
		host    string            // the hostname the real root sees ("": not checked)
		ibft    *ibft.Table       // an iBFT given by -acpitable; nil: none
	}{
		{"dhcp", "ip=dhcp " + netroot,
			[]string{
				`isboot: no iBFT: booting from the command line \(netroot=\)`,
				`isboot: note: no rd\.iscsi\.initiator=: initiator name iqn\.2026-01\.org\.isboot:\S+`,
				`isboot: network: using eth0, the only Ethernet link`,
				`isboot: network: eth0 is 10\.0\.2\.15/24`,
				`isboot: network: DHCP lease 10\.0\.2\.15/24 on eth0 from 10\.0\.2\.2 for 24h0m0s`,
			},
			map[string]string{"net.isboot.dhcp.address": "10.0.2.15/24", "net.isboot.dhcp.server": "10.0.2.2",
				"net.isboot.dhcp.state": "bound", "net.isboot.dhcp.lease_time": "86400", "net.isboot.dhcp.failures": "0"}, "", nil},
		{"static", "ip=10.0.2.15::10.0.2.2:255.255.255.0:isb-static:eth0:none rd.iscsi.firmware=0 " +
			"rd.iscsi.initiator=iqn.2026-01.org.isboot.test:static " + netroot,
			[]string{
				`isboot: rd\.iscsi\.firmware=0: not looking for an iBFT`,
				`isboot: network: using eth0, named by ip=`,
				`isboot: network: eth0 is 10\.0\.2\.15/24`,
			},
			map[string]string{"net.isboot.dhcp.address": ""}, "isb-static", nil},
		// An iBFT whose NIC's origin is DHCP, with isboot.dhcp=1: the address is
		// confirmed by a DHCP REQUEST at boot and the daemon keeps the lease. (Without
		// the key the daemon confirms it 30 s after it starts: netcfg's
		// TestIBFTLeaseConfirmedLater.)
		{"ibft-dhcp-origin", "isboot.debug=1 isboot.dhcp=1",
			[]string{
				`isboot: iBFT found at acpi`,
				`isboot: network: eth0 is 10\.0\.2\.15/24`,
				`isboot: network: DHCP lease 10\.0\.2\.15/24 on eth0 from 10\.0\.2\.2 for 24h0m0s`,
			},
			map[string]string{"net.isboot.dhcp.address": "10.0.2.15/24", "net.isboot.dhcp.server": "10.0.2.2",
				"net.isboot.dhcp.state": "bound", "hw.ibft.nic_origin": "3"}, "", dhcpOriginTable(port, tgt.TargetIQN())},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := vm.Config{
				Firmware: vm.Direct, Kernel: k.Image, Initrd: initrd,
				Cmdline: "console=ttyS0 panic=-1 isboot.timeout=60 " + tc.cmdline,
				NIC:     &vm.NIC{Model: "virtio-net-pci", MAC: "52:54:00:12:34:56"},
			}
			if tc.ibft != nil {
				raw, err := ibft.Encode(tc.ibft)
				if err != nil {
					t.Fatal(err)
				}
				file := filepath.Join(t.TempDir(), "ibft.bin")
				if err := os.WriteFile(file, raw, 0o644); err != nil {
					t.Fatal(err)
				}
				cfg.ACPITables = []string{file}
			}
			v := vm.Start(t, cfg)
			ctx := context.Background()
			m, err := v.WaitFor(ctx, 240*time.Second, `ISBOOT-ROOT-DONE|isboot: boot failed: .*`)
			if err != nil {
				t.Fatal(err)
			}
			con := strings.ReplaceAll(v.Console(), "\r", "")
			if m[0] != "ISBOOT-ROOT-DONE" {
				t.Fatalf("%s\n%s", m[0], story(con))
			}
			if err := v.Wait(ctx, 60*time.Second); err != nil {
				t.Errorf("no clean power-off: %v", err)
			}
			for _, want := range tc.console {
				if !regexp.MustCompile(want).MatchString(con) {
					t.Errorf("no %q on the console", want)
				}
			}
			if !strings.Contains(con, "ISBOOT-WROTE") {
				t.Error("the real root could not write through the LUN")
			}
			if tc.host != "" && !strings.Contains(con, "ISBOOT-HOSTNAME "+tc.host) {
				t.Errorf("the real root's hostname is not %s", tc.host)
			}
			st := statusOf(t, con)
			for k, want := range map[string]string{"net.isboot.state": "serving", "net.isboot.device": "nbd0", "net.isboot.target": tgt.TargetIQN()} {
				if st[k] != want {
					t.Errorf("status %s = %q, want %q", k, st[k], want)
				}
			}
			for k, want := range tc.status {
				if st[k] != want {
					t.Errorf("status %s = %q, want %q", k, st[k], want)
				}
			}
			if tc.name == "dhcp" {
				exp, err := time.Parse(time.RFC3339, st["net.isboot.dhcp.lease_expires"])
				if err != nil || time.Until(exp) < 23*time.Hour {
					t.Errorf("lease_expires %q (%v), want about a day from now", st["net.isboot.dhcp.lease_expires"], err)
				}
			}
			if mm := regexp.MustCompile(`exec /sbin/init \(([\d.]+) s after /init\)`).FindStringSubmatch(con); mm != nil {
				t.Logf("%s: /init to the real init: %s s; QEMU start to power-off: %.1f s", tc.name, mm[1], v.Elapsed().Seconds())
			}
			if testing.Verbose() {
				t.Logf("boot story:\n%s", story(con))
			}
		})
	}
}

// dhcpOriginTable is an iBFT as iPXE leaves it after its own DHCP on QEMU's user
// network: origin 3, the DHCP server recorded.
func dhcpOriginTable(port int, iqn string) *ibft.Table {
	return &ibft.Table{
		OEMID: "ISBOOT", OEMTableID: "DHCPBOOT",
		Initiator: ibft.Initiator{Flags: ibft.FlagValid | ibft.FlagBootSelected, Name: "iqn.2026-01.org.isboot.test:dhcp-origin"},
		NICs: []ibft.NIC{{
			Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("10.0.2.15"), Prefix: 24,
			Origin: ibft.OriginDHCP, Gateway: netip.MustParseAddr(vm.HostAddr), DHCP: netip.MustParseAddr(vm.HostAddr),
			MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, PCIBDF: 2 << 3, // -nodefaults puts the NIC at 00:02.0
		}},
		Targets: []ibft.Target{{
			Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr(vm.HostAddr), Port: uint16(port),
			LUN: 1, LUNRaw: [8]byte{0, 1}, Name: iqn,
		}},
	}
}

// statusOf parses the status file the real init printed.
func statusOf(t *testing.T, con string) map[string]string {
	t.Helper()
	i, j := strings.LastIndex(con, "ISBOOT-STATUS-BEGIN\n"), strings.LastIndex(con, "ISBOOT-STATUS-END")
	if i < 0 || j < i {
		t.Fatal("the real root printed no status file")
	}
	st := map[string]string{}
	for _, line := range strings.Split(con[i+len("ISBOOT-STATUS-BEGIN\n"):j], "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok {
			st[k] = v
		}
	}
	return st
}

// story is isboot's own lines of the console.
func story(con string) string {
	var lines []string
	for _, l := range strings.Split(con, "\n") {
		if strings.Contains(l, "isboot") || strings.HasPrefix(l, "ISBOOT") || strings.HasPrefix(l, "net.isboot.dhcp") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}
