package iscsi

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/isboot/isboot/internal/testkit/testtarget"
)

// Benchmarks against tgtd with a 1 GiB LUN on tmpfs, next to libiscsi's iscsi-perf
// doing the same workload in the same run: the ratio is what matters on a noisy box.

const benchQD = 32

func benchTarget(b *testing.B) *testtarget.Tgtd {
	dir, err := os.MkdirTemp("/dev/shm", "isboot-bench-")
	if err != nil {
		b.Skipf("no tmpfs at /dev/shm: %v", err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	backing := testtarget.CreateBacking(b, dir, 1<<30)
	// Fill part of the LUN so reads are not all holes.
	f, _ := os.OpenFile(backing, os.O_WRONLY, 0)
	f.WriteAt(pattern(64<<20, 1), 0)
	f.Close()
	return startTgtd(b, testtarget.TgtdOptions{Backing: backing})
}

// runOurs reads with QD workers for d and returns I/Os, bytes, allocations and
// the CPU time it took.
func runOurs(b *testing.B, l *LUN, size int, random bool, d time.Duration) (ios, bytes, allocs uint64, cpu time.Duration) {
	var wg sync.WaitGroup
	var n atomic.Uint64
	var next atomic.Int64
	blocks := l.Size() / int64(size)
	stop := make(chan struct{})
	bufs := make([][]byte, benchQD)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	cpu0 := selfCPU()
	for w := 0; w < benchQD; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 3))
			buf := bufs[w]
			for {
				select {
				case <-stop:
					return
				default:
				}
				var blk int64
				if random {
					blk = r.Int64N(blocks)
				} else {
					blk = next.Add(1) % blocks
				}
				if _, err := l.ReadAt(buf, blk*int64(size)); err != nil {
					b.Errorf("read: %v", err)
					return
				}
				n.Add(1)
			}
		}(w)
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	cpu = selfCPU() - cpu0
	runtime.ReadMemStats(&ms1)
	return n.Load(), n.Load() * uint64(size), ms1.Mallocs - ms0.Mallocs, cpu
}

// selfCPU is the user+system time this process has used (tgtd is a child, not counted).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var perfAverage = regexp.MustCompile(`iops average (\d+) \((\d+) MB/s\)`)

// runIscsiPerf runs libiscsi's iscsi-perf for secs and returns its average IOPS and
// MB/s and the CPU time it used.
func runIscsiPerf(b *testing.B, d *testtarget.Tgtd, blocks int, random bool, secs int) (iops, mbs float64, cpu time.Duration) {
	testenv.RequireTools(b, "iscsi benchmark", "iscsi-perf")
	args := []string{"-i", "iqn.2026-01.org.isboot.test:perf", "-m", strconv.Itoa(benchQD),
		"-b", strconv.Itoa(blocks), "-t", strconv.Itoa(secs)}
	if random {
		args = append(args, "-r")
	}
	args = append(args, fmt.Sprintf("iscsi://%s/%s/%d", d.Addr(), d.IQN, d.LUN))
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+20)*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "iscsi-perf", args...)
	out, err := cmd.CombinedOutput()
	m := perfAverage.FindAllSubmatch(out, -1)
	if err != nil || len(m) == 0 {
		b.Fatalf("iscsi-perf: %v\n%s", err, out)
	}
	last := m[len(m)-1]
	iops, _ = strconv.ParseFloat(string(last[1]), 64)
	mbs, _ = strconv.ParseFloat(string(last[2]), 64)
	return iops, mbs, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// benchRead alternates 2-second rounds of ours and iscsi-perf (b.N pairs), so load
// from elsewhere on the machine hits both alike, and reports the median ratio.
func benchRead(b *testing.B, size int, random bool) {
	d := benchTarget(b)
	cfg := testConfig(d)
	cfg.QueueDepth = benchQD
	cfg.Logf = func(string, ...any) {}
	s := dial(b, cfg)
	l := s.LUN()
	const round = 2 * time.Second
	var ratios []float64
	var ourIOPS, ourMBs, libIOPS, libMBs float64
	var ios, allocs uint64
	var ourCPU, libCPU time.Duration
	var libIOs float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		n, bytes, a, oc := runOurs(b, l, size, random, round)
		el := time.Since(start).Seconds()
		ios, allocs, ourCPU = ios+n, allocs+a, ourCPU+oc
		oi, om := float64(n)/el, float64(bytes)/el/1e6
		li, lm, lc := runIscsiPerf(b, d, size/512, random, int(round/time.Second))
		libCPU, libIOs = libCPU+lc, libIOs+li*round.Seconds()
		ratios = append(ratios, oi/li)
		ourIOPS, ourMBs, libIOPS, libMBs = ourIOPS+oi, ourMBs+om, libIOPS+li, libMBs+lm
	}
	b.StopTimer()
	nf := float64(b.N)
	ourIOPS, ourMBs, libIOPS, libMBs = ourIOPS/nf, ourMBs/nf, libIOPS/nf, libMBs/nf
	slices.Sort(ratios)
	ratio := ratios[len(ratios)/2]
	perIO := float64(allocs) / float64(max(ios, 1))
	// CPU per I/O says how much of the shared two cores each initiator takes from tgtd.
	ourCPUPerIO := ourCPU.Seconds() * 1e6 / float64(max(ios, 1))
	libCPUPerIO := libCPU.Seconds() * 1e6 / max(libIOs, 1)
	b.ReportMetric(ourMBs, "MB/s")
	b.ReportMetric(ourIOPS, "IOPS")
	b.ReportMetric(libMBs, "libiscsi-MB/s")
	b.ReportMetric(libIOPS, "libiscsi-IOPS")
	b.ReportMetric(ratio, "ratio")
	b.ReportMetric(perIO, "allocs/IO")
	b.ReportMetric(ourCPUPerIO, "cpu-us/IO")
	b.ReportMetric(libCPUPerIO, "libiscsi-cpu-us/IO")
	fmt.Printf("iscsi bench %s: ours %.0f IOPS %.0f MB/s, libiscsi %.0f IOPS %.0f MB/s, ratio ours/libiscsi %.2f (median of %v), %.3f allocs per I/O, CPU per I/O ours %.1f µs vs libiscsi %.1f µs\n",
		b.Name(), ourIOPS, ourMBs, libIOPS, libMBs, ratio, roundTo(ratios), perIO, ourCPUPerIO, libCPUPerIO)
}

func roundTo(r []float64) []string {
	var s []string
	for _, v := range r {
		s = append(s, strconv.FormatFloat(v, 'f', 2, 64))
	}
	return s
}

// BenchmarkSeqRead1MiBQD32 is `iscsi-perf -m 32 -b 2048` and our equivalent.
func BenchmarkSeqRead1MiBQD32(b *testing.B) { benchRead(b, 1<<20, false) }

// BenchmarkRandRead4KiBQD32 is `iscsi-perf -m 32 -b 8 -r` and our equivalent.
func BenchmarkRandRead4KiBQD32(b *testing.B) { benchRead(b, 4096, true) }
