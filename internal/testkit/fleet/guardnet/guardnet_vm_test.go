// Package guardnet_test proves the guarded boot network (internal/netguard) in a
// VM: the Debian systemd root, booted through isboot's initramfs from tgtd, starts
// and stops systemd-networkd (which must leave the boot NIC alone, told so by the
// .network isboot put in /run), then flushes the boot NIC's addresses and bounces
// its link while a writer fsyncs blocks onto the root. Every write must succeed
// with no I/O error in the guest kernel, every acknowledged block must read back,
// and the status file must count the restores.
package guardnet_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/testkit/debroot"
	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// This package's ports (testtarget.go's table): tgtd TCP ports and control ports.
const (
	portLo, portHi = 13600, 13609
	ctlPort        = 71
)

func TestMain(m *testing.M) { os.Exit(vm.RunTests(m)) }

// Writer geometry: 4096 blocks of 4 KiB (16 MiB), an fsync every 8 blocks.
const (
	dataFile = debroot.DataDir + "/guard.dat"
	slots    = 4096
	writeFor = 45 * time.Second
)

// kernelErrRE are guest kernel messages that mean an application or the filesystem
// saw an I/O failure, or a task hung.
const kernelErrRE = `I/O error|EXT4-fs error|Buffer I/O|Aborting journal|Remounting filesystem read-only|blocked for more than`

// hook runs in the guest at multi-user.target. GN- lines are for the test.
var hook = fmt.Sprintf(`D=%[1]s
restores() { sed -n 's/^net.isboot.guard.restores: //p' /run/isboot/status; }
stamp() { date +%%s.%%N; }
echo "GN-FILES $(ls /run/systemd/network/ /run/NetworkManager/conf.d/ | tr '\n' ' ')"
grep -E '^(KeepConfiguration|MACAddress|Address)=' /run/systemd/network/10-isboot-eth0.network | sed 's/^/GN-NETWORKD-FILE /'
./blkverify write -file $D -slots %[2]d -batch 8 -for %[3]ds > /run/w.log &
W=$!
sleep 5
echo "GN-BEFORE restores=$(restores)"
# systemd-networkd comes and goes: the .network in /run tells it to keep the boot
# NIC's configuration, so the guard has nothing to put back.
systemctl start systemd-networkd.service
sleep 4
echo "GN-NETWORKD-ACTIVE $(systemctl is-active systemd-networkd.service)"
grep -E '^(ADMIN_STATE|OPER_STATE|NETWORK_FILE)=' /run/systemd/netif/links/$(cat /sys/class/net/eth0/ifindex) | sed 's/^/GN-NETIF /'
systemctl stop systemd-networkd.service systemd-networkd.socket
sleep 1
echo "GN-NETWORKD restores=$(restores)"
# What the issue names: a root that flushes the boot NIC and bounces its link mid-write.
t0=$(stamp)
./busybox ip addr flush dev eth0
echo "GN-FLUSHED at=$t0 addr_after=$(./busybox ip -4 -o addr show dev eth0 | wc -l)"
sleep 3
t1=$(stamp)
./busybox ip link set eth0 down; sleep 1; ./busybox ip link set eth0 up
echo "GN-BOUNCED at=$t1"
sleep 3
echo "GN-AFTER restores=$(restores) $(./busybox ip -4 -o addr show dev eth0 | tr -s ' ' | cut -d' ' -f2-4) routes=$(./busybox ip -4 route show dev eth0 | wc -l)"
grep -E 'guard|reconnects|errors|state' /run/isboot/status | sed 's/^/GN-STATUS /'
wait $W
cat /run/w.log
line=$(grep 'blkverify: done' /run/w.log)
run=$(echo "$line" | sed 's/.* run=\([^ ]*\) .*/\1/')
acked=$(echo "$line" | sed 's/.* acked=\([0-9]*\) .*/\1/')
sync; echo 3 > /proc/sys/vm/drop_caches
./blkverify verify -file $D -slots %[2]d -run "$run" -acked "$acked"
echo "GN-KERNEL-ERRORS $(dmesg | grep -cE '%[4]s')"
dmesg | grep -E '%[4]s' | head -5 | sed 's/^/GN-KERR /'
dmesg | grep 'network guard' | sed 's/^\[[^]]*\] /GN-KLOG /'
echo GN-DONE
systemctl poweroff
`, dataFile, slots, int(writeFor.Seconds()), kernelErrRE)

func TestGuardKeepsRootThroughFlushAndBounce(t *testing.T) {
	vm.Require(t)
	testenv.Require(t, "VM test", "tgtd", "busybox")
	img := debroot.ForTest(t)
	kernel := vm.DebianKernel(t)
	initrd := vm.Initramfs(t, "guardnet", "-rescue", "none")
	blkverify := vm.BuildGo(t, "../../resilience/cmd/blkverify")
	busybox := staticBusybox(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "root.img")
	if err := img.CopyTo(disk); err != nil {
		t.Fatal(err)
	}
	port := testtarget.FreePort(t, portLo, portHi)
	tgt := testtarget.StartTgtd(t, testtarget.TgtdOptions{Port: port, ControlPort: ctlPort, Backing: disk})

	tab := &ibft.Table{
		OEMID: "ISBOOT", OEMTableID: "GUARDNET",
		Initiator: ibft.Initiator{Flags: ibft.FlagValid | ibft.FlagBootSelected, Name: "iqn.2026-01.org.isboot.test:guardnet"},
		NICs: []ibft.NIC{{
			Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("10.0.2.15"), Prefix: 24,
			Origin: ibft.OriginManual, Gateway: netip.MustParseAddr(vm.HostAddr),
			MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, PCIBDF: 2 << 3,
		}},
		Targets: []ibft.Target{{
			Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr(vm.HostAddr), Port: uint16(port),
			LUN: 1, LUNRaw: [8]byte{0, 1}, Name: tgt.IQN,
		}},
	}
	raw, err := ibft.Encode(tab)
	if err != nil {
		t.Fatal(err)
	}
	ibftPath := filepath.Join(dir, "ibft.bin")
	hookPath := filepath.Join(dir, "hook")
	for p, b := range map[string][]byte{ibftPath: raw, hookPath: []byte(hook)} {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	hookArgs, err := debroot.HookArgs(dir, hookPath, map[string]string{"blkverify": blkverify, "busybox": busybox})
	if err != nil {
		t.Fatal(err)
	}
	v := vm.Start(t, vm.Config{
		Firmware:   vm.Direct,
		Kernel:     kernel.Image,
		Initrd:     initrd,
		Cmdline:    "console=ttyS0 ro net.ifnames=0 panic=-1 isboot.timeout=120",
		NIC:        &vm.NIC{Model: "e1000", MAC: "52:54:00:12:34:56"},
		ACPITables: []string{ibftPath},
		ExtraArgs:  hookArgs,
	})
	t.Cleanup(func() {
		if t.Failed() {
			p := filepath.Join(os.TempDir(), fmt.Sprintf("isboot-guardnet-%d.log", time.Now().UnixNano()))
			if os.WriteFile(p, []byte(v.Console()), 0o644) == nil {
				t.Logf("console kept in %s", p)
			}
		}
	})
	ctx := context.Background()
	if _, err := v.WaitFor(ctx, 360*time.Second, debroot.MarkerReady); err != nil {
		t.Fatal(err)
	}
	t.Logf("multi-user.target reached %v after QEMU start", v.Elapsed().Round(100*time.Millisecond))
	if _, err := v.WaitFor(ctx, writeFor+240*time.Second, `GN-DONE`); err != nil {
		t.Fatal(err)
	}
	con := v.Console()
	find := func(re string) []string { return regexp.MustCompile(re).FindStringSubmatch(con) }
	for _, l := range regexp.MustCompile(`GN-(FILES|NETWORKD-FILE|NETWORKD-ACTIVE|NETIF|STATUS|KLOG|FLUSHED|BOUNCED) [^\r\n]*`).FindAllString(con, -1) {
		t.Logf("guest: %s", l)
	}

	// The hands-off files are in the real root's /run, and networkd honoured
	// its own: it came and went without taking anything the guard had to put back.
	if m := find(`GN-FILES ([^\r\n]*)`); m == nil || !strings.Contains(m[1], "10-isboot-eth0.network") || !strings.Contains(m[1], "10-isboot-eth0.conf") {
		t.Errorf("/run lacks the hands-off files: %q", m)
	}
	before, networkd, after := find(`GN-BEFORE restores=(\d+)`), find(`GN-NETWORKD restores=(\d+)`), find(`GN-AFTER restores=(\d+) ([^\r\n]*) routes=(\d+)`)
	if before == nil || networkd == nil || after == nil {
		t.Fatalf("the hook's report is incomplete: before %q, networkd %q, after %q", before, networkd, after)
	}
	if before[1] != "0" {
		t.Errorf("%s restores before any fault, want 0", before[1])
	}
	if networkd[1] != before[1] {
		t.Errorf("systemd-networkd's start and stop cost %s restores: it did not keep the boot NIC's configuration", networkd[1])
	}
	// networkd took the link with isboot's file (it manages it, as booted).
	if m := find(`GN-NETIF NETWORK_FILE=([^\r\n]*)`); m == nil || m[1] != "/run/systemd/network/10-isboot-eth0.network" {
		t.Errorf("systemd-networkd did not configure eth0 from isboot's file: %q (active: %q)", m, find(`GN-NETWORKD-ACTIVE [^\r\n]*`))
	}
	// The flush and the bounce each needed a restore; the address and the routes
	// are back.
	n, _ := strconv.Atoi(after[1])
	if n < 2 {
		t.Errorf("net.isboot.guard.restores %d after the flush and the bounce, want at least 2", n)
	}
	if !strings.Contains(after[2], "10.0.2.15/24") || after[3] == "0" {
		t.Errorf("after the faults eth0 has %q and %s routes, want 10.0.2.15/24 and its routes", after[2], after[3])
	}
	t.Logf("restores: %s before, %s after networkd, %d after the flush and the bounce", before[1], networkd[1], n)
	// Each restore is one line in the kernel log, long after switch_root.
	if klog := regexp.MustCompile(`GN-KLOG [^\r\n]*put back`).FindAllString(con, -1); len(klog) < 2 {
		t.Errorf("%d restores in the kernel log, want one line for each of at least 2", len(klog))
	}

	// The writer: every write acknowledged, nothing lost, no kernel error.
	done := find(`blkverify: done run=(0x[0-9a-f]+) acked=(\d+) writes=(\d+) max_fsync=([\d.]+)s stalls=(\d+) mib=(\d+)`)
	if done == nil {
		t.Fatalf("the writer did not finish: %q", find(`blkverify: ERROR[^\r\n]*`))
	}
	t.Logf("writer: acknowledged %s blocks (%s MiB), longest fsync %s s, %s fsyncs over 1 s: %q",
		done[2], done[6], done[4], done[5], regexp.MustCompile(`blkverify: stall fsync=[\d.]+s`).FindAllString(con, -1))
	if e := find(`blkverify: ERROR[^\r\n]*`); e != nil {
		t.Errorf("the guest saw an error: %s", e[0])
	}
	if v := find(`blkverify: verify ok[^\r\n]*`); v == nil {
		t.Errorf("verification failed: %q", find(`blkverify: ERROR verify[^\r\n]*`))
	} else {
		t.Logf("%s", strings.TrimSpace(v[0]))
	}
	if k := find(`GN-KERNEL-ERRORS (\d+)`); k == nil || k[1] != "0" {
		t.Errorf("guest kernel I/O errors: %q %q", k, regexp.MustCompile(`GN-KERR [^\r\n]*`).FindAllString(con, -1))
	}
	if err := v.Wait(ctx, 180*time.Second); err != nil && !strings.Contains(err.Error(), "exit status") {
		t.Errorf("poweroff: %v", err)
	}
}

// staticBusybox is the host's busybox if it is static (Debian's busybox-static):
// the guest root has no iproute2, and busybox's ip is what the fault needs.
func staticBusybox(t *testing.T) string {
	t.Helper()
	p := testenv.LookPath(t, "VM test", "busybox")
	out, err := exec.Command("ldd", p).CombinedOutput()
	if err == nil && !strings.Contains(string(out), "not a dynamic executable") {
		t.Fatalf("%s is dynamically linked (%s): install busybox-static", p, strings.TrimSpace(string(out)))
	}
	return p
}
