package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/internal/testkit/childproc"
	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/isboot/isboot/internal/testkit/testtarget"
)

// BenchmarkGatewayVsQemuNBD serves one tgtd LUN (1 GiB on tmpfs) through our gateway and
// through `qemu-nbd iscsi://` (QEMU's libiscsi) and measures both in the same run:
// nbdcopy of the whole LUN to null:, and fio random 4 KiB reads at queue depth 32.
//
// The copy keeps both cores busy with three processes: tgtd, nbdcopy and the server.
// So the CPU each uses per MiB is printed for both servers, with the ratio ours would
// reach if the gateway itself used no CPU at all (the ceiling this machine allows).
func BenchmarkGatewayVsQemuNBD(b *testing.B) {
	testenv.Require(b, "integration test", "nbdcopy", "fio", "qemu-nbd", "tgtd")
	const size = 1 << 30
	f, err := os.CreateTemp("/dev/shm", "isboot-bench-lun-")
	if err != nil {
		b.Skipf("no tmpfs for the LUN: %v", err)
	}
	b.Cleanup(func() { os.Remove(f.Name()) })
	// Allocated, not sparse: reads must touch real pages on the target side.
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		b.Fatal(err)
	}
	f.Close()
	d := testtarget.StartTgtd(b, testtarget.TgtdOptions{Port: testtarget.FreePort(b, portLo, portHi),
		ControlPort: ctlBench, Backing: f.Name(), KeepBuffers: true})
	lunURL := fmt.Sprintf("iscsi://%s/%s/1", d.Addr(), d.IQN)

	ours := "nbd+unix:///?socket=" + startServe(b, "--portal", d.Addr(), "--target", d.IQN, "--lun", "1")
	qemuSock, qemuPid := startQemuNBD(b, lunURL)
	qemu := "nbd+unix:///?socket=" + qemuSock
	// What each server used: ours runs in this process (tgtd, fio and qemu-nbd are
	// children, not counted), qemu-nbd is read from /proc.
	usage := []func() serverUsage{selfServerUsage, func() serverUsage { return procServerUsage(qemuPid) }}
	// The first copy after tgtd starts is slower for whoever goes first (tgtd's
	// buffers are new): one untimed copy through each server.
	for _, uri := range []string{ours, qemu} {
		if _, err := nbdcopy(uri); err != nil {
			b.Fatal(err)
		}
	}

	var seq, iops, ios [2]float64 // [ours, qemu]
	var rand [2]serverUsage       // during fio
	var copyCPU [2]copyUsage
	b.ResetTimer()
	for i := range b.N {
		for j := range 2 {
			k := (i + j) % 2 // alternate who goes first
			uri := []string{ours, qemu}[k]
			s0, t0 := usage[k](), procServerUsage(d.Pid())
			cu, err := nbdcopy(uri)
			if err != nil {
				b.Fatal(err)
			}
			s1, t1 := usage[k](), procServerUsage(d.Pid())
			seq[k] += float64(size) / (1 << 20) / cu.wall.Seconds()
			cu.server, cu.target = s1.cpu-s0.cpu, t1.cpu-t0.cpu
			copyCPU[k].add(cu)
			r := fioRandRead(b, uri)
			u := usage[k]()
			iops[k] += r
			ios[k] += r * fioSeconds
			rand[k].cpu += u.cpu - s1.cpu
			rand[k].switches += u.switches - s1.switches
		}
	}
	b.StopTimer()
	n := float64(b.N)
	mib := n * float64(size) / (1 << 20)
	b.ReportMetric(seq[0]/n, "gateway-MiB/s")
	b.ReportMetric(seq[1]/n, "qemu-nbd-MiB/s")
	b.ReportMetric(seq[0]/seq[1], "seq-ratio")
	b.ReportMetric(iops[0]/n, "gateway-IOPS")
	b.ReportMetric(iops[1]/n, "qemu-nbd-IOPS")
	b.ReportMetric(iops[0]/iops[1], "randread-ratio")
	var cpu, csw [2]float64
	for k := range 2 {
		cpu[k] = rand[k].cpu.Seconds() * 1e6 / max(ios[k], 1)
		csw[k] = float64(rand[k].switches) / max(ios[k], 1)
	}
	perMiB := func(d time.Duration) float64 { return d.Seconds() * 1e6 / mib }
	o, q := copyCPU[0], copyCPU[1]
	// CPU-bound, each copy's speed goes as 1 / (its CPU per MiB): the ceiling is
	// qemu-nbd's total over ours without the gateway's share.
	ceiling := perMiB(q.total()) / perMiB(o.target+o.client)
	b.ReportMetric(cpu[0], "gateway-randread-cpu-us/IO")
	b.ReportMetric(cpu[1], "qemu-nbd-randread-cpu-us/IO")
	b.ReportMetric(perMiB(o.server), "gateway-seq-cpu-us/MiB")
	b.ReportMetric(perMiB(q.server), "qemu-nbd-seq-cpu-us/MiB")
	b.ReportMetric(ceiling, "seq-ratio-ceiling")
	fmt.Printf("gateway vs qemu-nbd on one tgtd LUN: nbdcopy 1 GiB to null: %.0f vs %.0f MiB/s (%.2fx), server CPU per MiB %.0f vs %.0f µs; "+
		"fio randread 4k QD32: %.0f vs %.0f IOPS (%.2fx), server CPU per I/O %.1f vs %.1f µs, context switches per I/O %.2f vs %.2f\n",
		seq[0]/n, seq[1]/n, seq[0]/seq[1], perMiB(o.server), perMiB(q.server), iops[0]/n, iops[1]/n, iops[0]/iops[1], cpu[0], cpu[1], csw[0], csw[1])
	fmt.Printf("gateway vs qemu-nbd, CPU per MiB copied (tgtd + nbdcopy + server = all): %.0f + %.0f + %.0f = %.0f vs %.0f + %.0f + %.0f = %.0f µs; "+
		"with a gateway that used no CPU the ratio could reach %.2fx on this machine\n",
		perMiB(o.target), perMiB(o.client), perMiB(o.server), perMiB(o.total()),
		perMiB(q.target), perMiB(q.client), perMiB(q.server), perMiB(q.total()), ceiling)
}

// copyUsage is what one nbdcopy took: its wall time, and the CPU time of the target,
// of nbdcopy (the client) and of the server.
type copyUsage struct {
	wall, target, client, server time.Duration
}

func (u *copyUsage) add(v copyUsage) {
	u.wall += v.wall
	u.target += v.target
	u.client += v.client
	u.server += v.server
}

func (u copyUsage) total() time.Duration { return u.target + u.client + u.server }

// nbdcopy copies the export at uri to null: and returns its wall and its own CPU time.
func nbdcopy(uri string) (copyUsage, error) {
	cmd := exec.Command("nbdcopy", uri, "null:")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return copyUsage{}, fmt.Errorf("nbdcopy %s: %v\n%s", uri, err, out)
	}
	st := cmd.ProcessState
	return copyUsage{wall: time.Since(start), client: st.UserTime() + st.SystemTime()}, nil
}

// serverUsage is a server's CPU time and context switches (its sleeps and wake-ups).
type serverUsage struct {
	cpu      time.Duration
	switches int64
}

func selfServerUsage() serverUsage {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return serverUsage{time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), ru.Nvcsw + ru.Nivcsw}
}

// procServerUsage reads another process's totals from /proc: utime and stime from
// stat (clock ticks of 10 ms on Linux/amd64), context switches summed over its threads.
func procServerUsage(pid int) serverUsage {
	var u serverUsage
	stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if i := strings.LastIndexByte(string(stat), ')'); i > 0 {
		f := strings.Fields(string(stat[i+1:]))
		if len(f) > 12 {
			ut, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			u.cpu = time.Duration(ut+st) * 10 * time.Millisecond
		}
	}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	for _, t := range tasks {
		st, _ := os.ReadFile(t)
		for _, line := range strings.Split(string(st), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(k, "ctxt_switches") {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				u.switches += n
			}
		}
	}
	return u
}

// startQemuNBD serves lunURL with qemu-nbd on a unix socket until the benchmark ends;
// it returns the socket and qemu-nbd's pid.
func startQemuNBD(b *testing.B, lunURL string) (string, int) {
	sock := filepath.Join(b.TempDir(), "qemu-nbd.sock")
	cmd := exec.Command("qemu-nbd", "-f", "raw", "--socket", sock, "--shared=16", "--persistent", lunURL)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	child, err := childproc.Start(cmd)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-child.Done()
	})
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return sock, cmd.Process.Pid
		}
	}
	b.Fatalf("qemu-nbd did not create its socket: %s", stderr.String())
	return "", 0
}

// fioSeconds is how long each fio run lasts.
const fioSeconds = 5

func fioRandRead(b *testing.B, uri string) float64 {
	out, err := exec.Command("fio", "--name=randread", "--ioengine=nbd", "--uri="+uri,
		"--rw=randread", "--bs=4k", "--iodepth=32", "--runtime="+strconv.Itoa(fioSeconds), "--time_based",
		"--size=1G", "--output-format=json").Output()
	if err != nil {
		b.Fatalf("fio %s: %v\n%s", uri, err, out)
	}
	var res struct {
		Jobs []struct {
			Read struct {
				IOPS float64 `json:"iops"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if i := strings.IndexByte(string(out), '{'); i > 0 {
		out = out[i:]
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) == 0 {
		b.Fatalf("fio output: %v\n%s", err, out)
	}
	return res.Jobs[0].Read.IOPS
}
