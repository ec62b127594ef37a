package diskbench_test

import (
	"context"
	"fmt"
	"io"
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
	"github.com/isboot/isboot/internal/testkit/diskbench"
	"github.com/isboot/isboot/internal/testkit/rootimg"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// This package's slice of the shared ranges (see testtarget): TCP 13550-13559,
// tgtd control ports 63-64.
const (
	portLo, portHi = 13550, 13559
	ctlLo, ctlHi   = 63, 64
)

// The LUN: the root image, then scratch space only blkbench touches, so its writes
// never reach the root filesystem (whose backup GPT ends the first 128 MiB).
const (
	rootSize    = 128 << 20
	scratchSize = 256 << 20
	randFor     = 10 * time.Second
)

// realInit runs in both guests as the real root's /sbin/init, on the device the host
// names on the kernel command line; the root stays read-only.
var realInit = fmt.Sprintf(`#!/bin/sh
for w in $(cat /proc/cmdline); do case $w in bench.dev=*) dev=${w#bench.dev=};; esac; done
echo "BENCH-ROOT-UP $dev"
/bin/blkbench -dev "$dev" -offset %d -size %d -rand-for %s
if [ -f /run/isboot/status ]; then
	pid=$(grep '^net.isboot.pid:' /run/isboot/status | cut -d' ' -f2)
	echo "BENCH-DAEMON $(grep -E '^(VmHWM|VmRSS|RssAnon|RssFile)' /proc/$pid/status | tr -s ' \t\n' ' ') $(grep AnonHugePages /proc/$pid/smaps_rollup | tr -s ' ')"
	sleep 2 # the status file shows new counters within a second
	echo "BENCH-COUNTERS $(grep -E '^net.isboot.(commands|read_bytes|write_bytes|readahead)' /run/isboot/status | tr '\n' ' ')"
fi
poweroff -f
`, rootSize, scratchSize, randFor)

func TestMain(m *testing.M) {
	code := vm.RunTests(m)
	if ours.dir != "" {
		os.RemoveAll(ours.dir)
	}
	os.Exit(code)
}

var ours struct {
	once      sync.Once
	dir, path string
	err       error
}

// isbootInitrd builds the project's initramfs as `make initramfs` does, once per
// test binary (the framework calls a benchmark more than once).
func isbootInitrd(b *testing.B) string {
	isboot := vm.BuildGo(b, "../../../cmd/isboot", "-X main.Version=diskbench")
	ours.once.Do(func() {
		if ours.dir, ours.err = os.MkdirTemp("", "isboot-diskbench-"); ours.err != nil {
			return
		}
		ours.path = filepath.Join(ours.dir, "isboot-initramfs.img")
		cmd := exec.Command("go", "run", "../../../initramfs/cmd/mkinitramfs", "-isboot", isboot, "-o", ours.path)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			ours.err = fmt.Errorf("mkinitramfs: %v\n%s", err, out)
		}
	})
	if ours.err != nil {
		b.Fatal(ours.err)
	}
	return ours.path
}

// result is what blkbench printed: MiB/s and IOPS.
type result struct{ seqRead, seqWrite, randIOPS, qd1Micros, daemonHWM float64 }

var (
	resultRE  = regexp.MustCompile(`seq_write_MiBps=([\d.]+) seq_read_MiBps=([\d.]+) rand_read_iops=([\d.]+) rand_reads=\d+ qd1_read_us=([\d.]+)`)
	daemonHWM = regexp.MustCompile(`BENCH-DAEMON VmHWM: (\d+) kB`)
	daemonMem = regexp.MustCompile(`BENCH-DAEMON [^\r\n]*`)
)

// guest is one side of the comparison.
type guest struct {
	name   string
	initrd string
	dev    string // the LUN as the guest's root sees it
}

// BenchmarkDiskInVM boots, in the same TCG QEMU (virtio-net, 512 MiB, one CPU, the
// same iBFT) against the same tgtd LUN, isboot's initramfs and the kernel-initiator
// anchor (busybox + iscsistart + iscsi_tcp), and runs blkbench from the real root of
// each: sequential 1 MiB O_DIRECT write and read, 4 KiB random reads at QD 32. It
// reports ours/kernel for each; >1 means isboot is faster. Every iteration boots both,
// the first one alternating.
func BenchmarkDiskInVM(b *testing.B) {
	vm.Require(b)
	k := vm.DebianKernel(b)
	anchor, err := diskbench.AnchorInitrd(k)
	if err != nil {
		b.Fatal(err)
	}
	guests := []guest{{"isboot", isbootInitrd(b), "/dev/nbd0"}, {"kernel", anchor, "/dev/sda"}}
	if os.Getenv("ISBOOT_DISKBENCH_ONLY_OURS") != "" {
		guests = guests[:1] // for profiling runs: no ratio, only our figures
	}
	img, err := diskbench.RootImage(rootimg.Options{
		Size: rootSize, Init: realInit, UUID: "d15cbe4c-0000-4000-8000-000000000015",
		Files: map[string]string{"/bin/blkbench": vm.BuildGo(b, "./cmd/blkbench")},
	})
	if err != nil {
		b.Fatal(err)
	}
	disk := filepath.Join(b.TempDir(), "lun.img")
	if err := makeLUN(img, disk); err != nil {
		b.Fatal(err)
	}
	// KeepBuffers: with glibc's defaults tgtd's cost per MiB is a lottery drawn at each
	// target start (whether an early command raised the mmap threshold above the
	// later ones): 258 page faults per MiB and 2.7-3.9 ms of host CPU in some guests'
	// runs, none and 0.3 ms in others. On this two-core host that CPU is taken from
	// QEMU's, and it moved a guest's sequential read between 56 and 109 MiB/s.
	tgt := testtarget.StartTgtd(b, testtarget.TgtdOptions{
		Port: testtarget.FreePort(b, portLo, portHi), ControlPort: testtarget.FreeControlPort(b, ctlLo, ctlHi), Backing: disk,
		KeepBuffers: true})
	tab := ibftFile(b, tgt)
	b.ResetTimer()

	var sum [2]result
	var hwm float64 // the daemon's peak RSS, MiB: it had the queue full in the random test
	for i := 0; i < b.N; i++ {
		for j := range guests {
			g := (i + j) % len(guests)
			r := run(b, k, guests[g], tab, tgt.Pid())
			hwm = max(hwm, r.daemonHWM)
			b.Logf("%s on %s: seq write %.1f MiB/s, seq read %.1f MiB/s, random 4k read %.0f IOPS, one at a time %.0f µs each",
				guests[g].name, guests[g].dev, r.seqWrite, r.seqRead, r.randIOPS, r.qd1Micros)
			sum[g].qd1Micros += r.qd1Micros
			sum[g].seqRead += r.seqRead
			sum[g].seqWrite += r.seqWrite
			sum[g].randIOPS += r.randIOPS
		}
	}
	b.StopTimer()
	for g := range guests {
		n := float64(b.N)
		b.Logf("%s mean of %d: seq write %.1f MiB/s, seq read %.1f MiB/s, random 4k read %.0f IOPS, one at a time %.0f µs each",
			guests[g].name, b.N, sum[g].seqWrite/n, sum[g].seqRead/n, sum[g].randIOPS/n, sum[g].qd1Micros/n)
	}
	b.ReportMetric(hwm, "daemon-peak-rss-MiB")
	if len(guests) < 2 {
		return
	}
	b.ReportMetric(sum[0].seqRead/sum[1].seqRead, "seq-read-ours/kernel")
	b.ReportMetric(sum[0].seqWrite/sum[1].seqWrite, "seq-write-ours/kernel")
	b.ReportMetric(sum[0].randIOPS/sum[1].randIOPS, "rand-read-ours/kernel")
	// Latency, so lower is better: what one read alone in flight costs, as at boot.
	b.ReportMetric(sum[0].qd1Micros/sum[1].qd1Micros, "qd1-latency-ours/kernel")
}

// run boots g, waits for blkbench's line and the guest's own power-off.
func run(b *testing.B, k vm.Kernel, g guest, tab string, tgtdPid int) result {
	b.Helper()
	v := vm.Start(b, vm.Config{
		Firmware: vm.Direct, Kernel: k.Image, Initrd: g.initrd,
		Cmdline:    strings.TrimSpace("console=ttyS0 panic=-1 isboot.timeout=60 bench.dev=" + g.dev + " " + os.Getenv("ISBOOT_DISKBENCH_CMDLINE")),
		ACPITables: []string{tab},
		NIC:        &vm.NIC{Model: "virtio-net-pci", MAC: "52:54:00:12:34:56"},
		MemoryMB:   512, CPUs: benchCPUs(),
	})
	ctx := context.Background()
	// The host's side of each sequential phase: QEMU's threads and tgtd, per MiB.
	procs := map[string]int{"qemu": v.Pid(), "tgtd": tgtdPid}
	failed := `|blkbench: ERROR|isboot: boot failed: |ANCHOR-ERROR |Kernel panic - `
	for _, phase := range []string{"seq-write", "seq-read"} {
		var before hostCPU
		for _, mark := range []string{"begin", "end"} {
			m, err := v.WaitFor(ctx, 8*time.Minute, `(blkbench: `+mark+` `+phase+failed+`)[^\n]*\n`)
			if err != nil {
				b.Fatalf("%s guest: %v", g.name, err)
			}
			if !strings.Contains(m[0], mark+" "+phase) {
				b.Fatalf("%s guest failed: %s", g.name, strings.TrimSpace(m[0]))
			}
			if mark == "begin" {
				before = sampleHostCPU(procs)
			}
		}
		b.Logf("%s: host cpu %s %s (per MiB)", g.name, phase, sampleHostCPU(procs).perUnit(before, scratchSize>>20))
	}
	// Boot ~10 s, then at worst a few MiB/s for 2 x 256 MiB under a loaded TCG host.
	// Up to the line end: the console may hold half a line when WaitFor looks.
	m, err := v.WaitFor(ctx, 8*time.Minute, `(blkbench: (dev=|ERROR)|isboot: boot failed: |ANCHOR-ERROR |Kernel panic - )[^\n]*\n`)
	if err != nil {
		b.Fatalf("%s guest: %v", g.name, err)
	}
	line := strings.TrimSpace(m[0])
	rm := resultRE.FindStringSubmatch(line)
	if rm == nil {
		b.Fatalf("%s guest failed: %s", g.name, line)
	}
	if err := v.Wait(ctx, 60*time.Second); err != nil {
		b.Fatalf("%s guest did not power off: %v", g.name, err)
	}
	if dir := os.Getenv("ISBOOT_BENCH_CONSOLE"); dir != "" { // the whole console, for profiling
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("disk-%s-%d.log", g.name, time.Now().UnixNano())), []byte(v.Console()), 0o644); err != nil {
			b.Logf("console: %v", err)
		}
	}
	for _, l := range cpuLine.FindAllString(v.Console(), -1) {
		b.Logf("%s: %s", g.name, strings.TrimSpace(l))
	}
	var r result
	if g.name == "isboot" {
		hm := daemonHWM.FindStringSubmatch(v.Console())
		if hm == nil {
			b.Fatalf("isboot guest printed no daemon peak RSS")
		}
		kb, _ := strconv.ParseFloat(hm[1], 64)
		r.daemonHWM = kb / 1024
		if m := daemonMem.FindString(v.Console()); m != "" {
			b.Logf("isboot: %s", strings.TrimSpace(m))
		}
		if m := counters.FindString(v.Console()); m != "" {
			b.Logf("isboot: %s", strings.TrimSpace(m))
		}
	}
	if g.name == "kernel" {
		logLogin(b, v.Console())
	}
	r.seqWrite, _ = strconv.ParseFloat(rm[1], 64)
	r.seqRead, _ = strconv.ParseFloat(rm[2], 64)
	r.randIOPS, _ = strconv.ParseFloat(rm[3], 64)
	r.qd1Micros, _ = strconv.ParseFloat(rm[4], 64)
	return r
}

var (
	cpuLine  = regexp.MustCompile(`blkbench: cpu [^\r\n]*`)
	counters = regexp.MustCompile(`BENCH-COUNTERS [^\r\n]*`)
)

// logLogin shows that the anchor's disk came from the kernel initiator.
func logLogin(b *testing.B, con string) {
	var lines []string
	for _, l := range strings.Split(strings.ReplaceAll(con, "\r", ""), "\n") {
		if strings.Contains(l, "iscsistart") || strings.Contains(l, "anchor:") || strings.Contains(l, "iSCSI") ||
			strings.Contains(l, "Attached SCSI disk") {
			lines = append(lines, l)
		}
	}
	b.Logf("kernel initiator:\n%s", strings.Join(lines, "\n"))
}

// ibftFile writes the iBFT both guests get: QEMU user networking (guest 10.0.2.15,
// host 10.0.2.2), the virtio NIC at 00:02.0 (-nodefaults), tgtd's LUN 1.
func ibftFile(b *testing.B, tgt *testtarget.Tgtd) string {
	_, p, _ := net.SplitHostPort(tgt.Addr())
	port, _ := strconv.Atoi(p)
	valid := uint8(ibft.FlagValid | ibft.FlagBootSelected)
	raw, err := ibft.Encode(&ibft.Table{
		OEMID: "ISBOOT", OEMTableID: "DISKBNCH",
		Initiator: ibft.Initiator{Flags: valid, Name: "iqn.2026-01.org.isboot.test:diskbench"},
		NICs: []ibft.NIC{{
			Flags: valid, IP: netip.MustParseAddr("10.0.2.15"), Prefix: 24, Origin: ibft.OriginManual,
			Gateway: netip.MustParseAddr(vm.HostAddr), MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, PCIBDF: 2 << 3,
		}},
		Targets: []ibft.Target{{
			Flags: valid, IP: netip.MustParseAddr(vm.HostAddr), Port: uint16(port),
			LUN: 1, LUNRaw: [8]byte{0, 1}, Name: tgt.IQN,
		}},
	})
	if err != nil {
		b.Fatal(err)
	}
	f := filepath.Join(b.TempDir(), "ibft.bin")
	if err := os.WriteFile(f, raw, 0o644); err != nil {
		b.Fatal(err)
	}
	return f
}

// makeLUN copies the cached root image and fills the scratch behind it with data, so
// that each guest's writes overwrite allocated blocks of tgtd's backing file, as the
// next guest's do: filling holes costs the host more.
func makeLUN(img, dst string) error {
	in, err := os.Open(img)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		return err
	}
	if _, err := out.Seek(rootSize, io.SeekStart); err != nil {
		return err
	}
	if _, err := io.Copy(out, io.LimitReader(pattern{}, scratchSize)); err != nil {
		return err
	}
	return out.Close()
}

type pattern struct{}

func (pattern) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 0xa5
	}
	return len(p), nil
}

// benchCPUs is the guests' vCPU count: 1, the hardest case for a user-space server
// and the headline; ISBOOT_DISKBENCH_CPUS=N measures N.
func benchCPUs() int {
	if n, err := strconv.Atoi(os.Getenv("ISBOOT_DISKBENCH_CPUS")); err == nil {
		return n
	}
	return 1
}
