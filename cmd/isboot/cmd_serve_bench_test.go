package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
		ControlPort: ctlBench, Backing: f.Name()})
	lunURL := fmt.Sprintf("iscsi://%s/%s/1", d.Addr(), d.IQN)

	ours := "nbd+unix:///?socket=" + startServe(b, "--portal", d.Addr(), "--target", d.IQN, "--lun", "1")
	qemu := "nbd+unix:///?socket=" + startQemuNBD(b, lunURL)

	var seq, iops [2]float64 // [ours, qemu]
	b.ResetTimer()
	for i := range b.N {
		for j := range 2 {
			k := (i + j) % 2 // alternate who goes first
			uri := []string{ours, qemu}[k]
			start := time.Now()
			out, err := exec.Command("nbdcopy", uri, "null:").CombinedOutput()
			if err != nil {
				b.Fatalf("nbdcopy %s: %v\n%s", uri, err, out)
			}
			seq[k] += float64(size) / (1 << 20) / time.Since(start).Seconds()
			iops[k] += fioRandRead(b, uri)
		}
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(seq[0]/n, "gateway-MiB/s")
	b.ReportMetric(seq[1]/n, "qemu-nbd-MiB/s")
	b.ReportMetric(seq[0]/seq[1], "seq-ratio")
	b.ReportMetric(iops[0]/n, "gateway-IOPS")
	b.ReportMetric(iops[1]/n, "qemu-nbd-IOPS")
	b.ReportMetric(iops[0]/iops[1], "randread-ratio")
	fmt.Printf("gateway vs qemu-nbd on one tgtd LUN: nbdcopy 1 GiB to null: %.0f vs %.0f MiB/s (%.2fx); "+
		"fio randread 4k QD32: %.0f vs %.0f IOPS (%.2fx)\n",
		seq[0]/n, seq[1]/n, seq[0]/seq[1], iops[0]/n, iops[1]/n, iops[0]/iops[1])
}

// startQemuNBD serves lunURL with qemu-nbd on a unix socket until the benchmark ends.
func startQemuNBD(b *testing.B, lunURL string) string {
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
			return sock
		}
	}
	b.Fatalf("qemu-nbd did not create its socket: %s", stderr.String())
	return ""
}

func fioRandRead(b *testing.B, uri string) float64 {
	out, err := exec.Command("fio", "--name=randread", "--ioengine=nbd", "--uri="+uri,
		"--rw=randread", "--bs=4k", "--iodepth=32", "--runtime=5", "--time_based",
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
