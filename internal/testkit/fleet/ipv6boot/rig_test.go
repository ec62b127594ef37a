// Package ipv6boot boots isboot over IPv6 end to end in QEMU (user networking answers
// on fec0::2 and forwards to the host's ::1, where tgtd listens), and checks that a
// link-local target is dialed with its zone, in network namespaces.
package ipv6boot

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/testkit/rootimg"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// This package's slice of the shared ranges: TCP 13610-13619, tgtd control ports 73-74.
const (
	portLo, portHi = 13610, 13619
	ctlLo, ctlHi   = 73, 74
)

func TestMain(m *testing.M) { os.Exit(vm.RunTests(m)) }

// initrd builds isboot and its initramfs (without the rescue shell) once.
func initrd(t *testing.T) string {
	t.Helper()
	return vm.Initramfs(t, "ipv6test", "-rescue", "none")
}

// realInit runs in the real root: it shows its IPv6 addresses and routes and the
// status file, writes a marker through the LUN and powers off.
const realInit = `#!/bin/sh
echo "ISBOOT-ROOT-UP"
while read a i p s f n; do echo "ISBOOT-ADDR6 $n $a/$(( 0x$p )) scope=$s flags=$f"; done < /proc/net/if_inet6
while read d dl s sl g m rc u c n; do
	[ "$dl" = 00 ] && echo "ISBOOT-DEFAULT6 via=$g metric=$(( 0x$m )) dev=$n"
done < /proc/net/ipv6_route
for f in /run/net6-*.conf /run/isboot/resolv.conf; do [ -f $f ] && sed "s|^|ISBOOT-FILE $f |" $f; done
echo ISBOOT-STATUS-BEGIN
cat /run/isboot/status
echo ISBOOT-STATUS-END
mount -o remount,rw / || echo ISBOOT-ERROR remount
if [ -f /isboot-marker ]; then echo "ISBOOT-MARKER $(cat /isboot-marker)"; else echo "ISBOOT-MARKER none"; fi
echo "written-over-ipv6" > /isboot-marker
sync
echo ISBOOT-ROOT-DONE
poweroff -f
`

// target is tgtd serving a fresh root disk on the host's ::1, where QEMU's user
// network sends the guest's connections to fec0::2.
type target struct {
	tgt  *testtarget.Tgtd
	port int
	disk string
}

func startTarget(t *testing.T) *target {
	t.Helper()
	disk := filepath.Join(t.TempDir(), "disk.img")
	if err := rootimg.Make(disk, rootimg.Options{Init: realInit, ESP: true}); err != nil {
		t.Fatal(err)
	}
	port := testtarget.FreePort(t, portLo, portHi)
	tgt := testtarget.StartTgtd(t, testtarget.TgtdOptions{
		Host: "::1", Port: port, ControlPort: testtarget.FreeControlPort(t, ctlLo, ctlHi), Backing: disk,
	})
	return &target{tgt: tgt, port: port, disk: disk}
}

// ipv6Table is the iBFT of an IPv6-only boot on QEMU's user network: the guest is
// fec0::15/64 (global, set by hand), the gateway and target are the host at fec0::2,
// DNS is slirp's fec0::3.
func ipv6Table(iqn string, port int) *ibft.Table {
	return &ibft.Table{
		OEMID: "ISBOOT", OEMTableID: "IPV6TEST",
		Initiator: ibft.Initiator{Flags: ibft.FlagValid | ibft.FlagBootSelected, Name: "iqn.2026-01.org.isboot.test:ipv6"},
		NICs: []ibft.NIC{{
			Flags: ibft.FlagValid | ibft.FlagBootSelected | ibft.FlagNICGlobal, IP: netip.MustParseAddr("fec0::15"), Prefix: 64,
			Origin: ibft.OriginManual, Gateway: netip.MustParseAddr(vm.HostAddr6),
			DNS: [2]netip.Addr{netip.MustParseAddr("fec0::3")},
			MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, PCIBDF: 2 << 3, // -nodefaults: the NIC is 00:02.0
		}},
		Targets: []ibft.Target{{
			Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr(vm.HostAddr6), Port: uint16(port),
			LUN: 1, LUNRaw: [8]byte{0, 1}, Name: iqn,
		}},
	}
}

func writeTable(t *testing.T, tab *ibft.Table) string {
	t.Helper()
	raw, err := ibft.Encode(tab)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "ibft.bin")
	if err := os.WriteFile(file, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// waitRoot waits for the real root to finish and power off, and returns the console.
func waitRoot(t *testing.T, v *vm.VM) string {
	t.Helper()
	ctx := context.Background()
	m, err := v.WaitFor(ctx, 240*time.Second, `ISBOOT-ROOT-DONE|isboot: boot failed: .*`)
	if err != nil {
		t.Fatal(err)
	}
	if m[0] != "ISBOOT-ROOT-DONE" {
		t.Fatal(m[0])
	}
	if err := v.Wait(ctx, 60*time.Second); err != nil {
		t.Errorf("no clean power-off: %v", err)
	}
	con := strings.ReplaceAll(v.Console(), "\r", "")
	if testing.Verbose() {
		var lines []string
		for _, l := range strings.Split(con, "\n") {
			if strings.Contains(l, "isboot") || strings.HasPrefix(l, "ISBOOT") || strings.Contains(l, "iPXE") ||
				strings.Contains(l, "fec0") || strings.Contains(l, "SAN") {
				lines = append(lines, l)
			}
		}
		t.Logf("boot story:\n%s", strings.Join(lines, "\n"))
	}
	return con
}

// statusFrom parses the status file the real init printed.
func statusFrom(t *testing.T, con string) map[string]string {
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

func itoa(n int) string { return fmt.Sprint(n) }

var execInit = regexp.MustCompile(`exec /sbin/init \(([\d.]+) s after /init\)`)

// logTimes logs /init to the real init and QEMU start to power-off.
func logTimes(t *testing.T, con string, v *vm.VM) {
	if m := execInit.FindStringSubmatch(con); m != nil {
		t.Logf("/init to exec of the real init: %s s; QEMU start to power-off: %.1f s", m[1], v.Elapsed().Seconds())
	}
}

// check fails the test for every pattern the console lacks and every status key
// whose value differs, and for a root that could not write through the LUN.
func check(t *testing.T, con string, patterns []string, status map[string]string) map[string]string {
	t.Helper()
	for _, p := range patterns {
		if !regexp.MustCompile(p).MatchString(con) {
			t.Errorf("console lacks %q", p)
		}
	}
	st := statusFrom(t, con)
	for k, want := range status {
		if st[k] != want {
			t.Errorf("status %s = %q, want %q", k, st[k], want)
		}
	}
	if strings.Contains(con, "ISBOOT-ERROR") || !strings.Contains(con, "ISBOOT-MARKER none") {
		t.Error("the real root could not write through the LUN")
	}
	return st
}
