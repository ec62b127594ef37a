package initproc_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/rootimg"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// realInit runs in the real root: it shows the status file and the daemon's memory
// and thread flags, proves the root is writable through the LUN, and powers off.
const realInit = `#!/bin/sh
echo "ISBOOT-ROOT-UP pid=$$"
echo "ISBOOT-INIT-ARGS [$*]"
echo ISBOOT-STATUS-BEGIN
cat /run/isboot/status
echo ISBOOT-STATUS-END
pid=$(grep '^net.isboot.pid:' /run/isboot/status | cut -d' ' -f2)
echo "ISBOOT-DAEMON argv0=$(tr '\0' ' ' < /proc/$pid/cmdline) $(grep VmRSS /proc/$pid/status | tr -s ' \t' ' ')"
for s in /proc/$pid/task/*/stat; do echo "ISBOOT-THREAD $(sed 's/.*) //' $s | cut -d' ' -f7)"; done
mount -o remount,rw / || echo ISBOOT-ERROR remount
if [ -f /isboot-marker ]; then echo "ISBOOT-MARKER $(cat /isboot-marker)"; else echo "ISBOOT-MARKER none"; fi
echo "written-by-$(uname -r)" > /isboot-marker
sync
sleep 5
echo ISBOOT-STATUS-BEGIN
cat /run/isboot/status
echo ISBOOT-STATUS-END
echo ISBOOT-ROOT-DONE
poweroff -f
`

// scenario is one boot: the firmware path, the target, the disk, the kernel command
// line and what the console must show. New cases cost a few lines.
type scenario struct {
	name      string
	firmware  vm.Firmware
	nic       string // QEMU NIC model
	cmdline   string
	chap      testtarget.CHAP // the target's accounts (tgtd)
	mutual    testtarget.CHAP
	useCHAP   testtarget.CHAP // what the initiator is given (default chap)
	gotgt     bool            // the in-process gotgt instead of tgtd (no CHAP)
	disk      rootimg.Options
	wantRoot  string // the device root must be mounted from, e.g. /dev/nbd0p2
	wantMount string // the mount line, when the test is about it
	initArgs  string // the real init's arguments, space-separated ("": not checked)
	wantFail  string // regexp of the one failure line; "" expects the real root
}

var (
	rootUUID     = "5f3c1e2a-8b7d-4c6e-9a1f-2b3c4d5e6f70"
	rootPartUUID = "c0ffee00-1234-4abc-8def-0123456789ab"
)

func TestBootScenarios(t *testing.T) {
	vm.Require(t)
	chap := testtarget.CHAP{User: "isboot-user", Secret: "initiator-secret-1"}
	mutual := testtarget.CHAP{User: "isboot-target", Secret: "target-secret-22"}
	scenarios := []scenario{
		{name: "direct-mutual-chap-default-root", firmware: vm.Direct, nic: "e1000", chap: chap, mutual: mutual,
			disk: rootimg.Options{ESP: true}, wantRoot: "/dev/nbd0p2"},
		{name: "direct-virtio-root-uuid", firmware: vm.Direct, nic: "virtio-net-pci",
			cmdline: "isboot.debug=1 root=UUID=" + rootUUID, disk: rootimg.Options{UUID: rootUUID, ESP: true}, wantRoot: "/dev/nbd0p2"},
		{name: "direct-root-label", firmware: vm.Direct, nic: "e1000", cmdline: "root=LABEL=myroot",
			disk: rootimg.Options{Label: "myroot"}, wantRoot: "/dev/nbd0p1"},
		{name: "direct-root-partuuid", firmware: vm.Direct, nic: "e1000", cmdline: "root=PARTUUID=" + rootPartUUID,
			disk: rootimg.Options{PartUUID: rootPartUUID, ESP: true}, wantRoot: "/dev/nbd0p2"},
		{name: "direct-root-path-flags", firmware: vm.Direct, nic: "e1000",
			cmdline: "root=/dev/nbd0p2 rootfstype=ext4 rootflags=noatime rw single -- one two", disk: rootimg.Options{ESP: true},
			wantRoot: "/dev/nbd0p2", wantMount: "mount -t ext4 /dev/nbd0p2 /newroot -o noatime",
			// The kernel hands /init bare words and what follows "--" (the VM harness
			// puts its own parameters before it); the real init must get them all, in order.
			initArgs: "single one two"},
		{name: "bios-sanhook-gotgt", firmware: vm.BIOS, nic: "virtio-net-pci", gotgt: true,
			disk: rootimg.Options{}, wantRoot: "/dev/nbd0p1"},
		{name: "uefi-ipxe-tgtd-chap", firmware: vm.UEFI, nic: "e1000", chap: chap,
			disk: rootimg.Options{ESP: true}, wantRoot: "/dev/nbd0p2"},
		{name: "wrong-chap-secret", firmware: vm.Direct, nic: "e1000", chap: chap,
			useCHAP: testtarget.CHAP{User: chap.User, Secret: "wrong-secret-999"}, disk: rootimg.Options{},
			wantFail: `boot failed: wait for the LUN: .*authentication failed`},
		{name: "missing-root", firmware: vm.Direct, nic: "e1000", cmdline: "root=LABEL=nosuchlabel",
			disk: rootimg.Options{}, wantFail: `boot failed: find root: rootfind: no partition with LABEL=nosuchlabel`},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			runScenario(t, sc)
		})
	}
}

// runScenario boots sc and checks the outcome; it returns the console.
func runScenario(t testing.TB, sc scenario) string {
	_, initrd := image(t)
	k := vm.DebianKernel(t)
	disk := filepath.Join(t.TempDir(), "disk.img")
	sc.disk.Init = realInit
	if err := rootimg.Make(disk, sc.disk); err != nil {
		t.Fatal(err)
	}
	var addr, iqn string
	if sc.gotgt {
		g := testtarget.StartGotgt(t, testtarget.GotgtOptions{Port: testtarget.FreePort(t, 13380, 13389), Backing: disk})
		addr, iqn = g.Addr(), g.IQN
	} else {
		g := testtarget.StartTgtd(t, testtarget.TgtdOptions{
			Port: testtarget.FreePort(t, portLo, 13379), ControlPort: testtarget.FreeControlPort(t, ctlBase+2, ctlBase+9),
			Backing: disk, CHAP: sc.chap, MutualCHAP: sc.mutual})
		addr, iqn = g.Addr(), g.IQN
	}
	_, p, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(p)
	use := sc.useCHAP
	if use.User == "" {
		use = sc.chap
	}
	cfg := vm.Config{
		Firmware: sc.firmware, Kernel: k.Image, Initrd: initrd,
		Cmdline: strings.TrimSpace("console=ttyS0 panic=-1 isboot.timeout=60 " + sc.cmdline),
		NIC:     &vm.NIC{Model: sc.nic, MAC: "52:54:00:12:34:56"},
	}
	var secrets []string
	for _, s := range []string{use.Secret, sc.mutual.Secret} {
		if s != "" {
			secrets = append(secrets, s)
		}
	}
	switch sc.firmware {
	case vm.Direct:
		tab := directTable(iqn, port, use.User, use.Secret)
		if sc.mutual.User != "" {
			tg := &tab.Targets[0]
			tg.CHAPType, tg.RevCHAPName, tg.RevCHAPSecret = 2, sc.mutual.User, sc.mutual.Secret
		}
		cfg.ACPITables = []string{writeTable(t, tab)}
	default:
		cfg.IPXE = vm.IPXE{Target: &vm.SANTarget{Port: port, LUN: 1, IQN: iqn}}
		if use.User != "" {
			cfg.IPXE.Target.CHAP = &vm.CHAP{User: use.User, Secret: use.Secret, ReverseUser: sc.mutual.User, ReverseSecret: sc.mutual.Secret}
		}
	}
	v := vm.Start(t, cfg)
	ctx := context.Background()
	if sc.wantFail != "" {
		if _, err := v.WaitFor(ctx, 240*time.Second, `isboot: `+sc.wantFail); err != nil {
			t.Fatal(err)
		}
		if _, err := v.WaitFor(ctx, 30*time.Second, `isboot: starting the rescue shell`); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		con := v.Console()
		if n := strings.Count(con, "boot failed:"); n != 1 {
			t.Errorf("%d failure lines, want one", n)
		}
		checkNoSecrets(t, con, secrets)
		logBootStory(t, con)
		return con
	}
	m, err := v.WaitFor(ctx, 300*time.Second, `ISBOOT-ROOT-DONE|isboot: boot failed: .*`)
	if err != nil {
		t.Fatal(err)
	}
	if m[0] != "ISBOOT-ROOT-DONE" {
		t.Fatal(m[0])
	}
	if err := v.Wait(ctx, 60*time.Second); err != nil {
		t.Errorf("no clean power-off: %v", err)
	}
	con := v.Console()
	logBootStory(t, con)
	checkNoSecrets(t, con, secrets)
	st := statusFrom(t, con)
	for k, want := range map[string]string{
		"net.isboot.state": "serving", "net.isboot.device": "nbd0", "net.isboot.target": iqn,
		"net.isboot.lun": "1", "net.isboot.version": "vmtest", "hw.ibft.target_name": iqn,
	} {
		if st[k] != want {
			t.Errorf("status %s = %q, want %q", k, st[k], want)
		}
	}
	if _, ok := st["net.isboot.session.tsih"]; !ok { // gotgt hands out TSIH 0
		t.Error("status lacks net.isboot.session.tsih")
	}
	for _, k := range []string{"net.isboot.session.isid", "net.isboot.session.MaxRecvDataSegmentLength",
		"net.isboot.nic", "net.isboot.commands", "net.isboot.read_bytes"} {
		if st[k] == "" || st[k] == "0" {
			t.Errorf("status %s = %q, want a value", k, st[k])
		}
	}
	if m := regexp.MustCompile(`isboot: root: (\S+)`).FindStringSubmatch(con); m == nil || m[1] != sc.wantRoot {
		t.Errorf("root mounted from %v, want %s", m, sc.wantRoot)
	}
	if sc.wantMount != "" && !regexp.MustCompile(`isboot: `+regexp.QuoteMeta(sc.wantMount)+`\r?\n`).MatchString(con) {
		t.Errorf("no %q on the console", sc.wantMount)
	}
	// The daemon empties the initramfs once the real init runs (it says so at isboot.debug=1).
	if strings.Contains(sc.cmdline, "isboot.debug=") {
		m := regexp.MustCompile(`supervisor: emptied the initramfs: (\d+) entries`).FindStringSubmatch(con)
		if m == nil {
			t.Errorf("the daemon did not empty the initramfs after the exec")
		} else if n, _ := strconv.Atoi(m[1]); n < 100 {
			t.Errorf("the daemon emptied only %d entries of the initramfs", n)
		}
	}
	if want := "ISBOOT-INIT-ARGS [" + sc.initArgs + "]"; sc.initArgs != "" && !strings.Contains(con, want) {
		t.Errorf("the real init's arguments: no %q on the console", want)
	}
	if !strings.Contains(con, "ISBOOT-MARKER none") || strings.Contains(con, "ISBOOT-ERROR") {
		t.Errorf("the real root could not write through the LUN")
	}
	m = regexp.MustCompile(`ISBOOT-DAEMON argv0=(\S+) .*VmRSS: (\d+) kB`).FindStringSubmatch(con)
	if m == nil || m[1] != "@isboot" {
		t.Errorf("daemon after switch_root: %v", m)
	} else {
		t.Logf("daemon RSS after switch_root: %s kB", m[2])
	}
	const pfIOFlusher = 0x00080000 | 0x00100000
	threads := regexp.MustCompile(`ISBOOT-THREAD (\d+)`).FindAllStringSubmatch(con, -1)
	for _, th := range threads {
		f, _ := strconv.ParseUint(th[1], 10, 64)
		if f&pfIOFlusher != pfIOFlusher {
			t.Errorf("a daemon thread lacks PR_SET_IO_FLUSHER (flags %#x)", f)
		}
	}
	if len(threads) < 2 {
		t.Errorf("saw %d daemon threads", len(threads))
	}
	if m := regexp.MustCompile(`exec /sbin/init \(([\d.]+) s after /init\)`).FindStringSubmatch(con); m != nil {
		t.Logf("%s: /init to exec of the real init: %s s; QEMU start to done: %.1f s", sc.name, m[1], v.Elapsed().Seconds())
	}
	return con
}

func checkNoSecrets(t testing.TB, con string, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(con, s) {
			t.Errorf("a CHAP secret reached the console")
		}
	}
}

// statusFrom parses the status file the real init printed.
func statusFrom(t testing.TB, con string) map[string]string {
	t.Helper()
	con = strings.ReplaceAll(con, "\r", "")
	// The second copy, printed after the root did some I/O and the daemon's 5 s refresh.
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
	if testing.Verbose() {
		t.Logf("status:\n%s", con[i:j])
	}
	return st
}

var (
	kernelStamp    = `\[\s*([\d.]+)\] `
	kernelRunsInit = regexp.MustCompile(kernelStamp + `Run /init as init process`)
	initStart      = regexp.MustCompile(kernelStamp + `isboot: isboot \S+ as /init on`)
	initExec       = regexp.MustCompile(kernelStamp + `isboot: switch_root: executing init`)
	daemonRSS      = regexp.MustCompile(`ISBOOT-DAEMON .*VmRSS: (\d+) kB`)
)

// BenchmarkBoot measures, from the guest's kernel log, /init start (the kernel's "Run
// /init" line, so isboot's own start-up counts) to the exec of the real init (virtio
// NIC, tgtd, no CHAP), the daemon's RSS after switch_root, and the initramfs size.
// Goals: 1.0 s, 16 MiB, 12 MiB. It also reports the time from isboot's first log line,
// which leaves out the Go runtime's start and the early mounts.
func BenchmarkBoot(b *testing.B) {
	vm.Require(b)
	_, initrd := image(b)
	st, err := os.Stat(initrd)
	if err != nil {
		b.Fatal(err)
	}
	var total, fromLog, rss float64
	for i := 0; i < b.N; i++ {
		con := runScenario(b, scenario{name: "bench", firmware: vm.Direct, nic: "virtio-net-pci", wantRoot: "/dev/nbd0p1", cmdline: os.Getenv("ISBOOT_BENCH_CMDLINE")})
		if dir := os.Getenv("ISBOOT_BENCH_CONSOLE"); dir != "" { // the whole console, for profiling
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("boot-%d.log", i)), []byte(con), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		k, s, e, r := kernelRunsInit.FindStringSubmatch(con), initStart.FindStringSubmatch(con), initExec.FindStringSubmatch(con), daemonRSS.FindStringSubmatch(con)
		if k == nil || s == nil || e == nil || r == nil {
			b.Fatal("boot log lacks the kernel's Run /init, isboot's /init, the exec or the RSS line (quiet on the command line?)")
		}
		tk, _ := strconv.ParseFloat(k[1], 64)
		t0, _ := strconv.ParseFloat(s[1], 64)
		t1, _ := strconv.ParseFloat(e[1], 64)
		kb, _ := strconv.ParseFloat(r[1], 64)
		total += t1 - tk
		fromLog += t1 - t0
		rss = max(rss, kb/1024)
	}
	b.ReportMetric(total/float64(b.N), "init-to-exec-s")
	b.ReportMetric(fromLog/float64(b.N), "first-log-to-exec-s")
	b.ReportMetric(rss, "daemon-rss-MiB")
	b.ReportMetric(float64(st.Size())/(1<<20), "initramfs-MiB")
	b.Logf("initramfs %.1f MiB; daemon RSS %.1f MiB; /init to exec %.2f s (from isboot's first log line %.2f s)", float64(st.Size())/(1<<20), rss, total/float64(b.N), fromLog/float64(b.N))
}
