// Command blkbench measures a region of a block device from inside a VM guest, the
// same way for every initiator compared:
//
//  1. sequential writes of -seq-bs (1 MiB) with O_DIRECT, one at a time as dd does,
//     then fdatasync (its cache flush is part of the cost of a write);
//  2. sequential reads of the same region;
//  3. random -rand-bs (4 KiB) O_DIRECT reads at queue depth -qd (32 goroutines, each
//     blocking in its own pread) for -rand-for;
//  4. the same reads one at a time for -qd1-for: the latency of a request alone in
//     flight, which is what a booting system mostly waits on.
//
// Writes come first so that every read finds written data: on a sparse backing file
// a hole reads faster than data. Only [-offset, -offset+-size) is touched.
//
// It prints, for each phase, where the guest's CPU went (from /proc/stat: user,
// system, softirq and idle time per MiB or per 1,000 reads, and context switches),
// then one result line, or "blkbench: ERROR ..." and exits 1:
//
//	blkbench: cpu seq-read user=0.4ms sys=6.1ms softirq=3.2ms idle=2.0ms ctxt=410 (per MiB)
//	blkbench: dev=/dev/sda seq_write_MiBps=41.2 seq_read_MiBps=63.0 rand_read_iops=2875 rand_reads=28761 qd1_read_us=812
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	dev := flag.String("dev", "", "block device")
	offset := flag.Int64("offset", 128<<20, "first byte of the region (a multiple of -seq-bs)")
	size := flag.Int64("size", 256<<20, "bytes in the region (a multiple of -seq-bs)")
	seqBS := flag.Int("seq-bs", 1<<20, "sequential request size")
	randBS := flag.Int("rand-bs", 4096, "random read size")
	qd := flag.Int("qd", 32, "random reads in flight")
	randFor := flag.Duration("rand-for", 10*time.Second, "random read phase duration")
	qd1For := flag.Duration("qd1-for", 5*time.Second, "queue depth 1 random read phase duration")
	flag.Parse()
	if err := run(*dev, *offset, *size, *seqBS, *randBS, *qd, *randFor, *qd1For); err != nil {
		fmt.Printf("blkbench: ERROR %v\n", err)
		os.Exit(1)
	}
}

func run(dev string, offset, size int64, seqBS, randBS, qd int, randFor, qd1For time.Duration) error {
	if dev == "" || offset%int64(seqBS) != 0 || size%int64(seqBS) != 0 || size < int64(randBS) {
		return errors.New("need -dev, and -offset and -size multiples of -seq-bs")
	}
	// Under TCG a clock read through the HPET or ACPI PM timer is a device access:
	// a guest that fell back from the TSC pays it on every timestamp.
	if cs, err := os.ReadFile("/sys/devices/system/clocksource/clocksource0/current_clocksource"); err == nil {
		fmt.Printf("blkbench: clocksource %s\n", strings.TrimSpace(string(cs)))
	}
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	if offset+size > end {
		return fmt.Errorf("%s: %d bytes, the region ends at %d", dev, end, offset+size)
	}
	buf, err := alignedBuf(seqBS)
	if err != nil {
		return err
	}
	// Not zeros: nothing on the way may shortcut them.
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	fd := int(f.Fd())
	seq := func(write bool) (float64, error) {
		name := map[bool]string{true: "seq-write", false: "seq-read"}[write]
		defer cpuSince(name, readCPU(), float64(size)/(1<<20), "MiB")
		// For the host, which samples its own side (QEMU's threads, the target) in between.
		fmt.Printf("blkbench: begin %s\n", name)
		defer fmt.Printf("blkbench: end %s\n", name)
		t0 := time.Now()
		for off := offset; off < offset+size; off += int64(seqBS) {
			var n int
			var err error
			if write {
				n, err = unix.Pwrite(fd, buf, off)
			} else {
				n, err = unix.Pread(fd, buf, off)
			}
			if err == nil && n != seqBS {
				err = io.ErrShortWrite
			}
			if err != nil {
				return 0, fmt.Errorf("%s at %d: %w", map[bool]string{true: "write", false: "read"}[write], off, err)
			}
		}
		if write {
			if err := unix.Fdatasync(fd); err != nil {
				return 0, fmt.Errorf("fdatasync: %w", err)
			}
		}
		return float64(size) / (1 << 20) / time.Since(t0).Seconds(), nil
	}
	wr, err := seq(true)
	if err != nil {
		return err
	}
	rd, err := seq(false)
	if err != nil {
		return err
	}
	before := readCPU()
	iops, reads, err := random(fd, offset, size, randBS, qd, randFor)
	if err != nil {
		return err
	}
	cpuSince("random", before, float64(reads)/1000, "1000 reads")
	before = readCPU()
	iops1, reads1, err := random(fd, offset, size, randBS, 1, qd1For)
	if err != nil {
		return err
	}
	cpuSince("random-qd1", before, float64(reads1)/1000, "1000 reads")
	fmt.Printf("blkbench: dev=%s seq_write_MiBps=%.1f seq_read_MiBps=%.1f rand_read_iops=%.0f rand_reads=%d qd1_read_us=%.0f\n",
		dev, wr, rd, iops, reads, 1e6/iops1)
	return nil
}

// random runs qd readers until d has passed; the reads still in flight then count,
// and so does the time they take.
func random(fd int, offset, size int64, bs, qd int, d time.Duration) (iops float64, reads int64, err error) {
	var (
		stop  atomic.Bool
		total atomic.Int64
		wg    sync.WaitGroup
		once  sync.Once
	)
	blocks := size / int64(bs)
	t0 := time.Now()
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	defer timer.Stop()
	for g := range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf, e := alignedBuf(bs)
			if e != nil {
				once.Do(func() { err = e })
				stop.Store(true)
				return
			}
			rnd := rand.New(rand.NewPCG(uint64(g), 0x15b007))
			var n int64
			for !stop.Load() {
				off := offset + rnd.Int64N(blocks)*int64(bs)
				if k, e := unix.Pread(fd, buf, off); e != nil || k != bs {
					once.Do(func() { err = fmt.Errorf("random read at %d: %d bytes, %v", off, k, e) })
					stop.Store(true)
					break
				}
				n++
			}
			total.Add(n)
		}()
	}
	wg.Wait()
	reads = total.Load()
	return float64(reads) / time.Since(t0).Seconds(), reads, err
}

// alignedBuf is page-aligned memory, as O_DIRECT wants.
func alignedBuf(n int) ([]byte, error) {
	return unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
}

// cpuStat is the guest's CPU time so far, in clock ticks, and its context switches.
type cpuStat struct {
	user, sys, softirq, idle, ctxt float64
	daemon                         float64            // isboot daemon's context switches, all threads
	ksoftirqd                      float64            // ksoftirqd/0's CPU: network receive work deferred behind the runnable tasks
	daemonCPU                      float64            // the serving process's CPU, all threads
	tcp                            map[string]float64 // TcpExt counters
	softirqs                       map[string]float64 // softirqs raised, by kind (/proc/softirqs, all CPUs)
}

// softirqKinds are the kinds printed: network receive and send, the timers (the Go
// runtime's sleeps and the TCP timers), block completions, RCU and the scheduler.
var softirqKinds = []string{"NET_RX", "NET_TX", "TIMER", "HRTIMER", "BLOCK", "RCU", "SCHED"}

func readSoftirqs() map[string]float64 {
	m := map[string]float64{}
	b, err := os.ReadFile("/proc/softirqs")
	if err != nil {
		return m
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasSuffix(f[0], ":") {
			continue
		}
		for _, v := range f[1:] {
			x, _ := strconv.ParseFloat(v, 64)
			m[strings.TrimSuffix(f[0], ":")] += x
		}
	}
	return m
}

// tcpCounters are the TcpExt counters that show a receive queue in trouble (the
// stack copying queued segments together (collapse) or dropping them (prune, ofo)),
// and the segments in and out (Tcp), whose ratio shows how often the guest ACKs.
var tcpCounters = []string{"PruneCalled", "TCPRcvCollapsed", "TCPRcvQDrop", "TCPOFOQueue", "DelayedACKs", "InSegs", "OutSegs"}

func readCPU() cpuStat {
	var c cpuStat
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return c
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) > 7 && f[0] == "cpu":
			v := func(i int) float64 { x, _ := strconv.ParseFloat(f[i], 64); return x }
			c.user, c.sys, c.idle, c.softirq = v(1)+v(2), v(3), v(4)+v(5), v(6)+v(7)
		case len(f) == 2 && f[0] == "ctxt":
			c.ctxt, _ = strconv.ParseFloat(f[1], 64)
		}
	}
	c.daemon = daemonSwitches()
	c.ksoftirqd = threadTicks("ksoftirqd/0")
	c.daemonCPU = pidTicks(daemonPid())
	c.softirqs = readSoftirqs()
	c.tcp = map[string]float64{}
	for file, group := range map[string]string{"/proc/net/netstat": "TcpExt:", "/proc/net/snmp": "Tcp:"} {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		lines := strings.Split(string(b), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			names, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(names) == 0 || names[0] != group || len(vals) != len(names) {
				continue
			}
			for j, n := range names {
				c.tcp[n], _ = strconv.ParseFloat(vals[j], 64)
			}
		}
	}
	return c
}

// cpuSince prints where the CPU went since before, per unit of work. A tick is 10 ms
// (USER_HZ 100).
func cpuSince(phase string, before cpuStat, units float64, unit string) {
	if units <= 0 {
		return
	}
	a := readCPU()
	ms := func(x, y float64) float64 { return (x - y) * 10 / units }
	var tcp strings.Builder
	for _, k := range tcpCounters {
		fmt.Fprintf(&tcp, " %s=%.0f", k, a.tcp[k]-before.tcp[k])
	}
	tcp.WriteString("; softirqs per " + unit + ":")
	for _, k := range softirqKinds {
		fmt.Fprintf(&tcp, " %s=%.0f", k, (a.softirqs[k]-before.softirqs[k])/units)
	}
	fmt.Printf("blkbench: cpu %s user=%.1fms sys=%.1fms softirq=%.1fms idle=%.1fms ksoftirqd=%.1fms daemon=%.1fms ctxt=%.0f daemon-ctxt=%.0f (per %s) daemon-nice=%s; tcp:%s\n", phase,
		ms(a.user, before.user), ms(a.sys, before.sys), ms(a.softirq, before.softirq), ms(a.idle, before.idle), ms(a.ksoftirqd, before.ksoftirqd), ms(a.daemonCPU, before.daemonCPU),
		(a.ctxt-before.ctxt)/units, (a.daemon-before.daemon)/units, unit, daemonNice(), tcp.String())
}

// daemonSwitches sums the context switches of every thread of the isboot daemon
// named in /run/isboot/status (0 without one: the kernel initiator's guest).
func daemonSwitches() float64 {
	pid := daemonPid()
	if pid == "" {
		return 0
	}
	tasks, _ := os.ReadDir("/proc/" + pid + "/task")
	var sum float64
	for _, t := range tasks {
		st, _ := os.ReadFile("/proc/" + pid + "/task/" + t.Name() + "/status")
		for _, l := range strings.Split(string(st), "\n") {
			if f := strings.Fields(l); len(f) == 2 && strings.HasSuffix(f[0], "ctxt_switches:") {
				x, _ := strconv.ParseFloat(f[1], 64)
				sum += x
			}
		}
	}
	return sum
}

// daemonPid is the serving process named in /run/isboot/status ("" without one).
func daemonPid() string {
	b, err := os.ReadFile("/run/isboot/status")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "net.isboot.pid: "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// daemonNice is the serving process's nice value now ("-" without one): it follows
// the queue, so a phase that ends raised never had a queue the daemon could see.
func daemonNice() string {
	b, err := os.ReadFile("/proc/" + daemonPid() + "/stat")
	if err != nil {
		return "-"
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // f[0] is field 3
	if len(f) < 17 {
		return "-"
	}
	return f[16]
}

// threadTicks is the user and system ticks of the first task whose name is comm.
func threadTicks(comm string) float64 {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, st := range stats {
		if ticks, name := statTicks(st); name == comm {
			return ticks
		}
	}
	return 0
}

// pidTicks is the user and system ticks of process pid, all its threads (0 for "").
func pidTicks(pid string) float64 {
	if pid == "" {
		return 0
	}
	ticks, _ := statTicks("/proc/" + pid + "/stat")
	return ticks
}

// statTicks reads utime+stime and the name from a /proc stat file.
func statTicks(file string) (ticks float64, comm string) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, ""
	}
	s := string(b)
	open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || close < open {
		return 0, ""
	}
	f := strings.Fields(s[close+1:]) // f[0] is field 3
	if len(f) < 13 {
		return 0, ""
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return ut + st, s[open+1 : close]
}
