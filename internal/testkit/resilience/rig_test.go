package resilience_test

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
	"sync"
	"testing"
	"time"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/testkit/debroot"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// This package's port ranges: tgtd TCP ports and control ports (-C).
const (
	portLo, portHi = 13450, 13499
	ctlBase        = 50
)

// LongEnv enables the slow fault tests (make test-long).
const LongEnv = "ISBOOT_LONG"

func requireLong(t *testing.T) {
	t.Helper()
	if os.Getenv(LongEnv) == "" {
		t.Skipf("slow fault test: set %s=1 (make test-long)", LongEnv)
	}
}

func TestMain(m *testing.M) {
	code := vm.RunTests(m)
	if initrdOnce.path != "" {
		os.RemoveAll(filepath.Dir(initrdOnce.path))
	}
	os.Exit(code)
}

// Writer geometry: 4096 blocks of 4 KiB (16 MiB), an fsync every 8 blocks.
const (
	dataFile = debroot.DataDir + "/blk.dat"
	slots    = 4096
)

// kernelErrRE are guest kernel messages that mean an application or the
// filesystem saw an I/O failure, or a task hung.
const kernelErrRE = `I/O error|EXT4-fs error|Buffer I/O|Aborting journal|Remounting filesystem read-only|blocked for more than`

// rig is one Debian root on a tgtd LUN, booted through isboot.
type rig struct {
	t         *testing.T
	kernel    vm.Kernel
	initrd    string
	blkverify string
	isboot    string // the same binary the initramfs runs, for a replacement daemon
	disk      string // tgtd's backing file: a private copy of the Debian image
	tgt       *testtarget.Tgtd
	port      int
	iqn       string
}

var initrdOnce struct {
	sync.Once
	path string
	err  error
}

// isbootInitrd builds isboot and its initramfs once per test binary.
func isbootInitrd(t *testing.T) string {
	t.Helper()
	isboot := isbootBinary(t)
	initrdOnce.Do(func() {
		dir, err := os.MkdirTemp("", "isboot-resilience-")
		if err != nil {
			initrdOnce.err = err
			return
		}
		initrdOnce.path = filepath.Join(dir, "initrd.img")
		cmd := exec.Command("go", "run", "../../../initramfs/cmd/mkinitramfs", "-isboot", isboot,
			"-o", initrdOnce.path, "-rescue", "none")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			initrdOnce.err = fmt.Errorf("mkinitramfs: %v\n%s", err, out)
		}
	})
	if initrdOnce.err != nil {
		t.Fatal(initrdOnce.err)
	}
	return initrdOnce.path
}

func isbootBinary(t *testing.T) string {
	return vm.BuildGo(t, "../../../cmd/isboot", "-X main.Version=resilience")
}

// freeControlPort returns want, or the next control port in our range whose
// tgtd socket nobody answers on (another run of these tests may hold it).
func freeControlPort(want int) int {
	for i := 0; i < 10; i++ {
		n := ctlBase + (want-ctlBase+i)%10
		c, err := net.Dial("unix", fmt.Sprintf("/var/run/tgtd/socket.%d", n))
		if err != nil {
			return n
		}
		c.Close()
	}
	return want
}

// newRig prepares the Debian root on a fresh tgtd. slot picks the control port.
func newRig(t *testing.T, slot int) *rig {
	t.Helper()
	vm.Require(t)
	img := debroot.ForTest(t)
	r := &rig{t: t, kernel: vm.DebianKernel(t)}
	r.initrd = isbootInitrd(t)
	r.blkverify = vm.BuildGo(t, "./cmd/blkverify")
	r.isboot = isbootBinary(t)
	r.disk = filepath.Join(t.TempDir(), "root.img")
	t0 := time.Now()
	if err := img.CopyTo(r.disk); err != nil {
		t.Fatal(err)
	}
	t.Logf("root image copied in %v", time.Since(t0).Round(time.Millisecond))
	r.port = testtarget.FreePort(t, portLo, portHi)
	r.tgt = testtarget.StartTgtd(t, testtarget.TgtdOptions{Port: r.port, ControlPort: freeControlPort(ctlBase + slot), Backing: r.disk})
	r.iqn = r.tgt.IQN
	return r
}

// table is the iBFT of a direct boot: one NIC (QEMU user networking) and the
// given target portals (default: tgtd), the first boot-selected, all naming
// the same LUN.
func (r *rig) table(portals ...netip.AddrPort) *ibft.Table {
	if len(portals) == 0 {
		portals = []netip.AddrPort{r.portal()}
	}
	tab := &ibft.Table{
		OEMID: "ISBOOT", OEMTableID: "RESILIEN",
		Initiator: ibft.Initiator{Flags: ibft.FlagValid | ibft.FlagBootSelected, Name: "iqn.2026-01.org.isboot.test:resilience"},
		NICs: []ibft.NIC{{
			Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("10.0.2.15"), Prefix: 24,
			Origin: ibft.OriginManual, Gateway: netip.MustParseAddr(vm.HostAddr),
			MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, PCIBDF: 2 << 3,
		}},
	}
	for i, p := range portals {
		flags := uint8(ibft.FlagValid)
		if i == 0 {
			flags |= ibft.FlagBootSelected
		}
		tab.Targets = append(tab.Targets, ibft.Target{
			Index: i, Flags: flags, IP: p.Addr(), Port: p.Port(),
			LUN: 1, LUNRaw: [8]byte{0, 1}, Name: r.iqn,
		})
	}
	return tab
}

// portal is tgtd as the guest reaches it.
func (r *rig) portal() netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(vm.HostAddr), uint16(r.port))
}

type bootOpts struct {
	memoryMB int
	table    *ibft.Table       // default r.table()
	cmdline  string            // appended
	files    map[string]string // more files for the hook's directory: name to host path
}

// boot starts the guest with hook as the test script run at multi-user.target
// and waits until systemd got there.
func (r *rig) boot(hook string, o bootOpts) *vm.VM {
	t := r.t
	t.Helper()
	dir := t.TempDir()
	hookPath := filepath.Join(dir, "hook")
	if err := os.WriteFile(hookPath, []byte(hook), 0o644); err != nil {
		t.Fatal(err)
	}
	tab := o.table
	if tab == nil {
		tab = r.table()
	}
	raw, err := ibft.Encode(tab)
	if err != nil {
		t.Fatal(err)
	}
	ibftPath := filepath.Join(dir, "ibft.bin")
	if err := os.WriteFile(ibftPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"blkverify": r.blkverify, "isboot": r.isboot}
	for name, path := range o.files {
		files[name] = path
	}
	hookArgs, err := debroot.HookArgs(dir, hookPath, files)
	if err != nil {
		t.Fatal(err)
	}
	v := vm.Start(t, vm.Config{
		Firmware:   vm.Direct,
		Kernel:     r.kernel.Image,
		Initrd:     r.initrd,
		Cmdline:    strings.TrimSpace("console=ttyS0 ro net.ifnames=0 panic=-1 isboot.timeout=120 " + o.cmdline),
		MemoryMB:   o.memoryMB,
		NIC:        &vm.NIC{Model: "e1000", MAC: "52:54:00:12:34:56"},
		ACPITables: []string{ibftPath},
		ExtraArgs:  hookArgs,
	})
	keepConsole(t, v)
	m, err := v.WaitFor(context.Background(), 360*time.Second, debroot.MarkerReady+` (\S+) `)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("multi-user.target reached %v after QEMU start (systemd state %s)", v.Elapsed().Round(100*time.Millisecond), m[1])
	return v
}

// writeHook runs the writer for dur, checks what it acknowledged in place
// (O_DIRECT after dropping caches), reports the guest kernel's errors and
// powers off through systemd. between runs concurrently with the writer.
func writeHook(dur time.Duration, between string) string {
	return writeHookThen(dur, between, "systemctl poweroff")
}

// writeHookThen is writeHook with another way to end the boot.
func writeHookThen(dur time.Duration, between, end string) string {
	return fmt.Sprintf(`D=%s
%s
./blkverify write -file $D -slots %d -batch 8 -for %ds | tee /run/w.log
line=$(grep 'blkverify: done' /run/w.log)
run=$(echo "$line" | sed 's/.* run=\([^ ]*\) .*/\1/')
acked=$(echo "$line" | sed 's/.* acked=\([0-9]*\) .*/\1/')
sync; echo 3 > /proc/sys/vm/drop_caches
./blkverify verify -file $D -slots %d -run "$run" -acked "$acked"
%s
%s
`, dataFile, between, slots, int(dur.Seconds()), slots, reportSh, end)
}

// verifyHook checks a previous run's acknowledged blocks after a reboot.
func verifyHook(w writerResult) string {
	return fmt.Sprintf(`./blkverify verify -file %s -slots %d -run %s -acked %d
%s
systemctl poweroff
`, dataFile, slots, w.run, w.acked, reportSh)
}

// reportSh prints the guest kernel's error count and lines, the nbd story
// and the daemon's status.
const reportSh = `echo "RES-KERNEL-ERRORS $(dmesg | grep -cE '` + kernelErrRE + `')"
dmesg | grep -E '` + kernelErrRE + `' | head -5 | sed 's/^/RES-KERR /'
dmesg | grep -iE 'nbd|isboot|iscsi' | grep -vE 'switch_root|switching|root:|target:' | sed 's/^\[[^]]*\] //; s/[0-9][0-9]*/N/g' | sort | uniq -c | sort -rn | head -12 | sed 's/^/RES-KLOG /'
grep -E 'state|reconnects|errors' /run/isboot/status | sed 's/^/RES-STATUS /'
echo RES-REPORT-DONE`

// LogDir keeps the consoles of failed tests (the VM's own directory goes
// with the test).
var LogDir = filepath.Join(os.TempDir(), "isboot-resilience-logs")

func keepConsole(t *testing.T, v *vm.VM) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		os.MkdirAll(LogDir, 0o755)
		name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
		p := filepath.Join(LogDir, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano()))
		if os.WriteFile(p, []byte(v.Console()), 0o644) == nil {
			t.Logf("console kept in %s", p)
		}
	})
}

type writerResult struct {
	run                   string
	acked, writes, stalls int
	maxFsync              float64
	mib                   int
	stallLines            []string
}

var doneRE = regexp.MustCompile(`blkverify: done run=(0x[0-9a-f]+) acked=(\d+) writes=(\d+) max_fsync=([\d.]+)s stalls=(\d+) mib=(\d+)`)

// waitWriter waits for the writer's start and end and checks its in-place
// verification and the kernel report.
func (r *rig) waitWriter(v *vm.VM, dur time.Duration, onStart func()) writerResult {
	t := r.t
	t.Helper()
	ctx := context.Background()
	if _, err := v.WaitFor(ctx, 60*time.Second, `blkverify: start run=`); err != nil {
		t.Fatal(err)
	}
	if onStart != nil {
		onStart()
	}
	m, err := v.WaitFor(ctx, dur+300*time.Second, `blkverify: (done run=[^\r\n]*|ERROR[^\r\n]*)[\r\n]`)
	if err != nil {
		t.Fatal(err)
	}
	d := doneRE.FindStringSubmatch(m[0])
	if d == nil {
		t.Fatalf("the guest's writer failed: %s", m[0])
	}
	w := writerResult{run: d[1]}
	w.acked, _ = strconv.Atoi(d[2])
	w.writes, _ = strconv.Atoi(d[3])
	w.maxFsync, _ = strconv.ParseFloat(d[4], 64)
	w.stalls, _ = strconv.Atoi(d[5])
	w.mib, _ = strconv.Atoi(d[6])
	for _, s := range regexp.MustCompile(`blkverify: stall fsync=[\d.]+s`).FindAllString(v.Console(), -1) {
		w.stallLines = append(w.stallLines, strings.TrimPrefix(s, "blkverify: "))
	}
	t.Logf("writer: run %s acknowledged %d blocks (%d MiB written, %d fsyncs over 1 s, longest %.1f s)",
		w.run, w.acked, w.mib, w.stalls, w.maxFsync)
	switch {
	case w.acked == 0:
		t.Errorf("the writer acknowledged nothing")
	case w.acked < slots:
		t.Logf("note: the writer acknowledged %d blocks, less than one pass over its %d-block file", w.acked, slots)
	}
	r.checkVerify(v, "in place")
	return w
}

// checkVerify waits for the verifier's verdict and the kernel report.
func (r *rig) checkVerify(v *vm.VM, when string) {
	t := r.t
	t.Helper()
	ctx := context.Background()
	m, err := v.WaitFor(ctx, 120*time.Second, `blkverify: (verify ok[^\r\n]*|ERROR[^\r\n]*)[\r\n]`)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(m[1], "verify ok") {
		t.Errorf("verification %s: %s", when, m[1])
	} else {
		t.Logf("verification %s: %s", when, strings.TrimSpace(m[1]))
	}
	k, err := v.WaitFor(ctx, 60*time.Second, `RES-KERNEL-ERRORS (\d+)[\r\n]`)
	if err != nil {
		t.Fatal(err)
	}
	if k[1] != "0" {
		errs := regexp.MustCompile(`RES-KERR .*`).FindAllString(v.Console(), -1)
		t.Errorf("guest kernel logged %s I/O errors (%s): %q", k[1], when, errs)
	}
	if _, err := v.WaitFor(ctx, 30*time.Second, `RES-REPORT-DONE`); err != nil {
		t.Fatal(err)
	}
	for _, l := range regexp.MustCompile(`RES-(KLOG|STATUS|FIO|MEM) [^\r\n]*`).FindAllString(v.Console(), -1) {
		t.Logf("guest %s: %s", when, l)
	}
}

// poweroff waits for systemd's poweroff to end QEMU and reports how long it took.
func (r *rig) poweroff(v *vm.VM) time.Duration {
	return r.poweroffWant(v, "reboot: Power down")
}

// poweroffWant waits for QEMU to exit after the guest printed want.
func (r *rig) poweroffWant(v *vm.VM, want string) time.Duration {
	r.t.Helper()
	t0 := time.Now()
	if err := v.Wait(context.Background(), 180*time.Second); err != nil && !strings.Contains(err.Error(), "exit status") {
		r.t.Fatalf("systemctl poweroff did not complete: %v", err)
	}
	took := time.Since(t0)
	con := v.Console()
	if !strings.Contains(con, want) {
		r.t.Errorf("the guest did not power down cleanly (no %q)", want)
	}
	return took
}

// rebootAndVerify boots again, checks systemd-fsck-root found the root
// clean, verifies every acknowledged block, powers off and runs a full
// e2fsck on the target's backing file.
func (r *rig) rebootAndVerify(w writerResult, o bootOpts) {
	t := r.t
	t.Helper()
	v := r.boot(verifyHook(w), o)
	if m, err := v.WaitFor(context.Background(), 30*time.Second, debroot.MarkerFsck+debroot.Label+`: ([^\r\n]*)[\r\n]`); err != nil {
		t.Errorf("the next boot's systemd-fsck-root said nothing about the root: %v", err)
	} else if !strings.HasPrefix(m[1], "clean") {
		t.Errorf("the next boot's systemd-fsck-root did not find the root clean: %s", m[1])
	} else {
		t.Logf("next boot: systemd-fsck-root: %s: %s", debroot.Label, m[1])
	}
	r.checkVerify(v, "after reboot")
	took := r.poweroff(v)
	t.Logf("second poweroff took %v", took.Round(100*time.Millisecond))
	r.fsckHost()
}

// fsckHost runs e2fsck -fn on the LUN's backing file once the guest is off.
func (r *rig) fsckHost() {
	out, err := exec.Command("e2fsck", "-fn", debroot.FSPath(r.disk)).CombinedOutput()
	if err != nil {
		r.t.Errorf("host e2fsck -fn of the LUN: %v\n%s", err, out)
		return
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	r.t.Logf("host e2fsck -fn: %s", lines[len(lines)-1])
}
