package diskbench_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/debroot"
	"github.com/isboot/isboot/internal/testkit/diskbench"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// bootHook runs in the systemd root once multi-user.target is reached (debroot's
// hook unit): it prints systemd's own monotonic timestamps, which count from the
// kernel's start, so neither QEMU's start nor the host's reading of the console
// is in them, and powers off cleanly so the next boot finds the filesystem as the
// image left it. Before that it prints systemd's critical chain to the unit, the
// slowest units and the processes that used the most CPU (all their threads, from
// schedstat: a Go daemon's main thread alone shows almost nothing) and how long they
// waited, runnable, for the CPU, for a reader of -v who wants to know where a slow
// boot went. Booted with block tracing on
// ($ISBOOT_BENCH_CMDLINE="trace_event=block:block_rq_issue,block:block_rq_complete
// trace_buf_size=8M"), it also prints every request as BENCH-TRACE lines.
const bootHook = `echo "BENCH-BOOT unit=$(systemctl show -P ExecMainStartTimestampMonotonic isboot-test-hook.service) userspace=$(systemctl show -P UserspaceTimestampMonotonic)"
for d in nbd0 sda; do [ -e /sys/block/$d/stat ] && echo "BENCH-IO $d $(cat /sys/block/$d/stat)"; done
systemd-analyze critical-chain --no-pager isboot-test-hook.service 2>&1 | sed 's/^/BENCH-CHAIN /'
systemd-analyze blame --no-pager 2>&1 | head -n 8 | sed 's/^/BENCH-BLAME /'
echo "BENCH-BLAME cpu: $(head -n 1 /proc/stat)"
[ -e /run/isboot/status ] && grep -E '^net.isboot.(commands|read_bytes|write_bytes|zero_writes|readahead)' /run/isboot/status | sed 's/^/BENCH-BLAME /'
for p in /proc/[0-9]*; do read -r c < $p/comm 2>/dev/null; case "$c" in *isboot*|iscsi*) echo "BENCH-BLAME $c: $(cut -d' ' -f14,15 $p/stat) ticks, nice $(cut -d' ' -f19 $p/stat), $(grep -E '^sysc' $p/io | tr '\n' ' ')$(cat $p/task/*/status | awk '/ctxt_switches/ {n[$1] += $2} END {for (k in n) printf "%s %d ", k, n[k]}')";; esac; done
for p in /proc/[0-9]*; do read -r c < $p/comm 2>/dev/null || continue; t=0; w=0; for s in $p/task/*/schedstat; do read -r ns wait _ < $s 2>/dev/null && t=$((t + ns)) && w=$((w + wait)); done; echo "$((t / 1000000)) ms $c (waited $((w / 1000000)) ms to run)"; done | sort -rn | head -n 12 | sed 's/^/BENCH-CPU /'
t=/sys/kernel/tracing/trace; [ -e $t ] && grep -q block_rq $t && grep block_rq $t | sed 's/^/BENCH-TRACE /'
systemctl poweroff
`

// benchIO is the root disk's /sys/block/<dev>/stat at the hook: reads, merged,
// sectors, and the milliseconds reads took, summed; the I/O the boot did, which the
// host's load does not change, and how long the boot waited for it.
var benchIO = regexp.MustCompile(`BENCH-IO (\w+) +(\d+) +(\d+) +(\d+) +(\d+)`)

var bootTimes = regexp.MustCompile(`BENCH-BOOT unit=(\d+) userspace=(\d+)`)

// BenchmarkBootVsIscsistart boots the same Debian systemd root (debroot) from the
// same tgtd LUN, in the same TCG QEMU (virtio-net, one CPU, the same iBFT and
// command line), through isboot's initramfs and through the kernel-initiator anchor
// (busybox + iscsistart + iscsi_tcp, then busybox switch_root), and reports
// ours/anchor of kernel start → the start of a unit after multi-user.target (the
// goal is ≤ 1.0), with both absolute times, kernel start → exec of systemd, and
// /init → the exec of the real init (the kernel's "Run /init" line to isboot's exec or
// the anchor's switch_root).
// Every boot gets a fresh copy of the image; the first guest alternates.
func BenchmarkBootVsIscsistart(b *testing.B) {
	vm.Require(b)
	img := debroot.ForTest(b)
	k := vm.DebianKernel(b)
	anchor, err := diskbench.AnchorInitrd(k)
	if err != nil {
		b.Fatal(err)
	}
	guests := []guest{{"isboot", isbootInitrd(b), "/dev/nbd0"}, {"anchor", anchor, "/dev/sda"}}
	if os.Getenv("ISBOOT_DISKBENCH_ONLY_OURS") != "" { // A/B runs of our own builds: no ratio
		guests = guests[:1]
	}
	dir := b.TempDir()
	disk := filepath.Join(dir, "lun.img")
	if err := img.CopyTo(disk); err != nil {
		b.Fatal(err)
	}
	// KeepBuffers: tgtd's allocator, not the initiators, would otherwise set part of
	// the pace (see BenchmarkDiskInVM).
	tgt := testtarget.StartTgtd(b, testtarget.TgtdOptions{
		Port: testtarget.FreePort(b, portLo, portHi), ControlPort: testtarget.FreeControlPort(b, ctlLo, ctlHi), Backing: disk,
		KeepBuffers: true})
	tab := ibftFile(b, tgt)
	hook := filepath.Join(dir, "hook")
	if err := os.WriteFile(hook, []byte(bootHook), 0o644); err != nil {
		b.Fatal(err)
	}
	hookArgs, err := debroot.HookArgs(dir, hook, nil)
	if err != nil {
		b.Fatal(err)
	}
	// For A/B runs on a busy host: "-icount shift=1" makes the guest's clock count
	// instructions, so its CPU work takes the same guest time however busy the host is.
	hookArgs = append(hookArgs, strings.Fields(os.Getenv("ISBOOT_BENCH_QEMU_ARGS"))...)
	b.ResetTimer()

	var unit, userspace, initExec [2]float64 // sums, seconds
	for i := 0; i < b.N; i++ {
		for j := range guests {
			g := (i + j) % len(guests)
			if i+j > 0 { // the image as built, not as the last guest left it
				tgt.Stop()
				if err := img.CopyTo(disk); err != nil {
					b.Fatal(err)
				}
				tgt.Restart()
			}
			u, us, ie := bootOnce(b, k, guests[g], tab, hookArgs, i)
			b.Logf("%s: /init → exec %.2f s, kernel start → systemd %.2f s, → unit after multi-user.target %.2f s", guests[g].name, ie, us, u)
			unit[g] += u
			userspace[g] += us
			initExec[g] += ie
		}
	}
	b.StopTimer()
	n := float64(b.N)
	b.Logf("mean of %d: isboot %.2f s (systemd at %.2f s, /init → exec %.2f s), anchor %.2f s (systemd at %.2f s, /init → exec %.2f s)",
		b.N, unit[0]/n, userspace[0]/n, initExec[0]/n, unit[1]/n, userspace[1]/n, initExec[1]/n)
	if unit[1] > 0 {
		b.ReportMetric(unit[0]/unit[1], "unit-ours/anchor")
	}
	b.ReportMetric(unit[0]/n, "ours-unit-s")
	b.ReportMetric(unit[1]/n, "anchor-unit-s")
	b.ReportMetric(userspace[0]/n, "ours-systemd-s")
	b.ReportMetric(userspace[1]/n, "anchor-systemd-s")
	b.ReportMetric(initExec[0]/n, "ours-init-to-exec-s")
	b.ReportMetric(initExec[1]/n, "anchor-init-to-exec-s")
}

var (
	runsInit = regexp.MustCompile(`\[\s*([\d.]+)\] Run /init as init process`)
	// isboot's exec of the real init, or the anchor's last line before switch_root.
	execsInit = regexp.MustCompile(`\[\s*([\d.]+)\] (?:isboot: switch_root: executing init|anchor: switch_root to)`)
)

// bootOnce boots g and returns kernel start → the hook unit's start, → systemd's
// start, and /init → the exec of the real init, in seconds, from the guest's clock.
// With $ISBOOT_BENCH_CONSOLE set, each console goes to <guest>-<i>.log there.
func bootOnce(b *testing.B, k vm.Kernel, g guest, tab string, hookArgs []string, i int) (unit, userspace, initExec float64) {
	b.Helper()
	v := vm.Start(b, vm.Config{
		Firmware: vm.Direct, Kernel: k.Image, Initrd: g.initrd,
		// The anchor takes root=/dev/... only and otherwise mounts /dev/sda1, the
		// same partition isboot finds by UUID.
		Cmdline: strings.TrimSpace("console=ttyS0 panic=-1 net.ifnames=0 isboot.timeout=60 root=UUID=" + debroot.FSUUID +
			" " + os.Getenv("ISBOOT_BENCH_CMDLINE")),
		ACPITables: []string{tab},
		NIC:        &vm.NIC{Model: "virtio-net-pci", MAC: "52:54:00:12:34:56"},
		MemoryMB:   768, CPUs: 1,
		ExtraArgs: hookArgs,
	})
	ctx := context.Background()
	m, err := v.WaitFor(ctx, 5*time.Minute, `BENCH-BOOT unit=\d+ userspace=\d+|isboot: boot failed: [^\n]*|ANCHOR-ERROR [^\n]*|Kernel panic - [^\n]*`)
	if err != nil {
		b.Fatalf("%s guest: %v", g.name, err)
	}
	t := bootTimes.FindStringSubmatch(m[0])
	if t == nil {
		b.Fatalf("%s guest failed: %s", g.name, m[0])
	}
	if err := v.Wait(ctx, 3*time.Minute); err != nil {
		b.Fatalf("%s guest did not power off: %v", g.name, err)
	}
	if io := benchIO.FindStringSubmatch(v.Console()); io != nil {
		reads, _ := strconv.ParseFloat(io[2], 64)
		sectors, _ := strconv.ParseFloat(io[4], 64)
		ms, _ := strconv.ParseFloat(io[5], 64)
		b.Logf("%s: %s read %s requests, %.1f MiB by the hook, %.2f ms each on average", g.name, io[1], io[2], sectors/2048, ms/max(reads, 1))
	}
	if testing.Verbose() {
		var where []string
		for _, line := range strings.Split(strings.ReplaceAll(v.Console(), "\r", ""), "\n") {
			if i := strings.Index(line, "BENCH-CHAIN "); i >= 0 {
				where = append(where, "chain: "+line[i+len("BENCH-CHAIN "):])
			} else if i := strings.Index(line, "BENCH-BLAME "); i >= 0 {
				where = append(where, "blame: "+line[i+len("BENCH-BLAME "):])
			} else if i := strings.Index(line, "BENCH-CPU "); i >= 0 {
				where = append(where, "cpu: "+line[i+len("BENCH-CPU "):])
			}
		}
		b.Logf("%s: where systemd's time went:\n%s", g.name, strings.Join(where, "\n"))
	}
	if dir := os.Getenv("ISBOOT_BENCH_CONSOLE"); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%d.log", g.name, i)), []byte(v.Console()), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	us, _ := strconv.ParseFloat(t[1], 64)
	uss, _ := strconv.ParseFloat(t[2], 64)
	if us == 0 || uss == 0 {
		b.Fatalf("%s guest: systemd gave no timestamps: %s", g.name, m[0])
	}
	con := strings.ReplaceAll(v.Console(), "\r", "")
	r, e := runsInit.FindStringSubmatch(con), execsInit.FindStringSubmatch(con)
	if r == nil || e == nil {
		b.Fatalf("%s guest: the console lacks the kernel's Run /init or the exec of the real init", g.name)
	}
	t0, _ := strconv.ParseFloat(r[1], 64)
	t1, _ := strconv.ParseFloat(e[1], 64)
	return us / 1e6, uss / 1e6, t1 - t0
}
