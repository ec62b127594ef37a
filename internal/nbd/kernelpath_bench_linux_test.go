package nbd

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/iscsi"
)

// BenchmarkKernelPathRandRead4KiB drives a tgtd LUN the way the kernel drives the
// daemon (a socketpair, no handshake, 32 requests in flight, random 4 KiB reads) with
// GOMAXPROCS=1 as in a one-vCPU guest, through the LUN's asynchronous path and
// through the goroutine-per-request path, and reports the ratio of their IOPS. CPU
// time per I/O covers this process: the server and the benchmark's client. Each
// iteration is kernelPathIOs reads, so `make bench`'s -benchtime 3x means something.
func BenchmarkKernelPathRandRead4KiB(b *testing.B) {
	_, s := tgtdSession(b, testtarget.TgtdOptions{Size: 64 << 20}, "kernel-path", iscsi.Config{})
	iops := map[string]float64{}
	for _, c := range []struct {
		name string
		dev  blockdev.Device
	}{
		{"async", s.LUN()},
		{"goroutines", struct{ *iscsi.LUN }{s.LUN()}}, // hides ReadAtAsync
	} {
		b.Run(c.name, func(b *testing.B) {
			iops[c.name] = kernelPathReads(b, c.dev)
		})
	}
	if iops["goroutines"] > 0 {
		fmt.Printf("kernel path, random 4 KiB reads QD32 on tgtd, GOMAXPROCS=1: async %.0f IOPS, goroutine per request %.0f IOPS (%.2fx)\n",
			iops["async"], iops["goroutines"], iops["async"]/iops["goroutines"])
	}
}

const kernelPathIOs = 20000

func kernelPathReads(b *testing.B, dev blockdev.Device) float64 {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	srvEnd, err := net.FileConn(os.NewFile(uintptr(fds[0]), "server"))
	if err != nil {
		b.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[1]), "client")
	cli, err := net.FileConn(f)
	if err != nil {
		b.Fatal(err)
	}
	syscall.Close(fds[0])
	f.Close()
	defer cli.Close()
	go NewServer(dev, Options{}).ServeTransmission(context.Background(), srvEnd)

	const depth, size = 32, 4096
	blocks := uint64(dev.Size()) / size
	req := make([]byte, requestSize)
	binary.BigEndian.PutUint32(req, magicRequest)
	binary.BigEndian.PutUint32(req[24:], size)
	x := uint64(88172645463325252)
	send := func() {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.BigEndian.PutUint64(req[16:], x%blocks*size)
		if _, err := cli.Write(req); err != nil {
			b.Fatal(err)
		}
	}
	reply := make([]byte, replySize+size)
	var ru0, ru1 syscall.Rusage
	b.ResetTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	start := time.Now()
	total := b.N * kernelPathIOs
	sent := 0
	for ; sent < min(depth, total); sent++ {
		send()
	}
	for range total {
		if _, err := io.ReadFull(cli, reply); err != nil {
			b.Fatal(err)
		}
		if errno := binary.BigEndian.Uint32(reply[4:]); errno != 0 {
			b.Fatalf("read failed: errno %d", errno)
		}
		if sent < total {
			send()
			sent++
		}
	}
	elapsed := time.Since(start)
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
	iops := float64(total) / elapsed.Seconds()
	b.ReportMetric(iops, "IOPS")
	b.ReportMetric(float64(cpu.Microseconds())/float64(total), "cpu-us/IO")
	return iops
}
