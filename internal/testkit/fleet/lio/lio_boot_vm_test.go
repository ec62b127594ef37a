package lio_test

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/testkit/liotarget"
	"github.com/isboot/isboot/internal/testkit/rootimg"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// bootInit is the real root's init: it writes a marker through the LUN, then
// appends and syncs one line a second while the host kills and restarts LIO,
// reads the lines back past the page cache, counts the kernel's I/O errors, shows
// the status file and powers off.
const bootInit = `#!/bin/sh
echo "ISBOOT-ROOT-UP"
mount -o remount,rw / || echo ISBOOT-ERROR remount
if [ -f /isboot-marker ]; then echo "ISBOOT-MARKER $(cat /isboot-marker)"; else echo "ISBOOT-MARKER none"; fi
echo "written-through-lio-by-$(uname -r)" > /isboot-marker
sync
echo ISBOOT-WRITER-START
i=0
while [ $i -lt ` + writerLines + ` ]; do echo "line $i $(date +%s)" >> /lines; sync; i=$((i+1)); sleep 1; done
echo 3 > /proc/sys/vm/drop_caches
echo "ISBOOT-WRITER-DONE lines=$(grep -c '^line ' /lines) io_errors=$(dmesg | grep -cE 'I/O error|EXT4-fs error|Buffer I/O|Aborting journal')"
sleep 6 # the daemon refreshes its counters every 5 s
echo ISBOOT-STATUS-BEGIN
cat /run/isboot/status
echo ISBOOT-STATUS-END
echo ISBOOT-ROOT-DONE
poweroff -f
`

// writerLines is how many lines the root appends across the target's restart.
const writerLines = "30"

// isbootInitrd builds isboot and its initramfs (no rescue shell) once.
func isbootInitrd(t *testing.T) string {
	t.Helper()
	return vm.Initramfs(t, "lio", "-rescue", "none")
}

// TestBootFromLIO: a second guest boots through isboot from the LIO VM: the iBFT
// names LIO's portal as the guest sees it (10.0.2.2:port, the host's forward into
// the target VM), LUN 1 and mutual CHAP. The root must come up from /dev/nbd0 and
// write through the LUN (the marker lands in the disk file on the host); LIO is then
// killed and booted again while the root appends and syncs, which must lose no line
// and log no kernel I/O error, the daemon counting the reconnect. The status file
// must show LIO's disk; no secret may reach either console.
func TestBootFromLIO(t *testing.T) {
	vm.Require(t)
	k := vm.DebianKernel(t)
	initrdPath := isbootInitrd(t)
	disk := filepath.Join(t.TempDir(), "root.img")
	if err := rootimg.Make(disk, rootimg.Options{Init: bootInit, ESP: true}); err != nil {
		t.Fatal(err)
	}
	tg := liotarget.Start(t, liotarget.Options{
		Port: testtarget.FreePort(t, portLo, portHi), Disk: disk, LUN: 1, CHAP: chap, Mutual: mutual,
	})
	tab := &ibft.Table{
		OEMID: "ISBOOT", OEMTableID: "LIOBOOT",
		Initiator: ibft.Initiator{Flags: ibft.FlagValid | ibft.FlagBootSelected, Name: tg.Initiator()},
		NICs: []ibft.NIC{{
			Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("10.0.2.15"), Prefix: 24,
			Origin: ibft.OriginManual, Gateway: netip.MustParseAddr(vm.HostAddr),
			MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, PCIBDF: 2 << 3, // -nodefaults: NIC at 00:02.0
		}},
		Targets: []ibft.Target{{
			Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr(vm.HostAddr), Port: uint16(tg.Port()),
			LUN: 1, LUNRaw: [8]byte{0, 1}, Name: tg.TargetIQN(),
			CHAPType: ibft.CHAPMutual, CHAPName: chap.User, CHAPSecret: chap.Secret,
			RevCHAPName: mutual.User, RevCHAPSecret: mutual.Secret,
		}},
	}
	raw, err := ibft.Encode(tab)
	if err != nil {
		t.Fatal(err)
	}
	tabPath := filepath.Join(t.TempDir(), "ibft.bin")
	if err := os.WriteFile(tabPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	v := vm.Start(t, vm.Config{
		Firmware: vm.Direct, Kernel: k.Image, Initrd: initrdPath, MemoryMB: 384,
		Cmdline:    "console=ttyS0 panic=-1 isboot.timeout=120",
		ACPITables: []string{tabPath},
		NIC:        &vm.NIC{Model: "e1000", MAC: "52:54:00:12:34:56"},
	})
	ctx := context.Background()
	m, err := v.WaitFor(ctx, 300*time.Second, `ISBOOT-WRITER-START|isboot: boot failed: [^\r\n]*`)
	if err != nil {
		t.Fatal(err)
	}
	if m[0] != "ISBOOT-WRITER-START" {
		t.Fatal(m[0])
	}
	t.Logf("the root is up %.1f s after QEMU start; killing LIO under its writes", v.Elapsed().Seconds())
	time.Sleep(3 * time.Second)
	t0 := time.Now()
	tg.Kill()
	time.Sleep(3 * time.Second)
	tg.Restart()
	t.Logf("LIO killed, down 3 s, booted again in %.1f s", tg.Boots[len(tg.Boots)-1].Seconds())
	w, err := v.WaitFor(ctx, 240*time.Second, `ISBOOT-WRITER-DONE lines=(\d+) io_errors=(\d+)`)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the root's writer finished %.1f s after the kill: %s lines read back, %s kernel I/O errors",
		time.Since(t0).Seconds(), w[1], w[2])
	if w[1] != writerLines || w[2] != "0" {
		t.Errorf("the root's writer across the restart: %s of %s lines, %s I/O errors", w[1], writerLines, w[2])
	}
	m, err = v.WaitFor(ctx, 120*time.Second, `ISBOOT-ROOT-DONE|isboot: boot failed: [^\r\n]*`)
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
	if e := regexp.MustCompile(`exec /sbin/init \(([\d.]+) s after /init\)`).FindStringSubmatch(con); e != nil {
		t.Logf("/init to the real init: %s s; QEMU start to power-off %.1f s", e[1], v.Elapsed().Seconds())
	}
	// The daemon's story of the restart.
	for _, l := range regexp.MustCompile(`isboot: [^\n]*(logged in to|lost|reconnect|LINK_DEAD|RECONFIGURE)[^\n]*`).FindAllString(con, 20) {
		t.Log(l)
	}
	if m := regexp.MustCompile(`isboot: root: (\S+)`).FindStringSubmatch(con); m == nil || m[1] != "/dev/nbd0p2" {
		t.Errorf("root mounted from %v, want /dev/nbd0p2", m)
	}
	if !strings.Contains(con, "ISBOOT-MARKER none") || strings.Contains(con, "ISBOOT-ERROR") {
		t.Error("the real root could not write through the LUN")
	}
	i, j := strings.Index(con, "ISBOOT-STATUS-BEGIN\n"), strings.Index(con, "ISBOOT-STATUS-END")
	if i < 0 || j < i {
		t.Fatal("the real root printed no status file")
	}
	st := map[string]string{}
	for _, line := range strings.Split(con[i+len("ISBOOT-STATUS-BEGIN\n"):j], "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok {
			st[k] = v
		}
	}
	if st["net.isboot.commands"] == "0" || st["net.isboot.write_bytes"] == "0" {
		t.Errorf("status counts %s commands, %s bytes written", st["net.isboot.commands"], st["net.isboot.write_bytes"])
	}
	if st["net.isboot.reconnects"] == "0" || st["net.isboot.reconnects"] == "" {
		t.Errorf("status counts %q reconnects after LIO's restart", st["net.isboot.reconnects"])
	}
	for k, want := range map[string]string{
		"net.isboot.state": "serving", "net.isboot.target": tg.TargetIQN(), "net.isboot.lun": "1",
		"net.isboot.lun.vendor": "LIO-ORG", "net.isboot.lun.serial": tg.Serial(),
	} {
		if st[k] != want {
			t.Errorf("status %s = %q, want %q", k, st[k], want)
		}
	}
	var neg []string
	for _, k := range []string{"CHAP_A", "InitialR2T", "ImmediateData", "TargetMaxRecvDataSegmentLength", "MaxBurstLength", "FirstBurstLength"} {
		neg = append(neg, k+"="+st["net.isboot.session."+k])
	}
	t.Logf("the boot's session with LIO: %s; %s commands, %s bytes read, %s written, %s reconnects",
		strings.Join(neg, " "), st["net.isboot.commands"], st["net.isboot.read_bytes"], st["net.isboot.write_bytes"], st["net.isboot.reconnects"])
	for _, c := range []string{con, tg.VM().Console()} {
		if strings.Contains(c, chap.Secret) || strings.Contains(c, mutual.Secret) {
			t.Error("a CHAP secret reached a console")
		}
	}
	img, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(img, []byte("written-through-lio-by-")) {
		t.Error("the marker the root wrote is not in the disk file behind LIO")
	}
}
