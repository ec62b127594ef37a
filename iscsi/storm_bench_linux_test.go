package iscsi

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/testenv"
)

// A boot storm: a rack powers on and every machine logs in to the same target at
// once and reads its boot files. stormSessions sessions log in together to one tgtd
// and each reads stormBytes in 1 MiB reads; next to it, as many libiscsi clients do
// the same in the same run (iscsi-inq for the login alone, iscsi-perf for reading).
const (
	stormSessions = 64
	stormBytes    = 64 << 20
)

func BenchmarkBootStorm(b *testing.B) {
	testenv.RequireTools(b, "iscsi benchmark", "iscsi-perf", "iscsi-inq")
	d := benchTarget(b)
	var ourLogin, libLogin []time.Duration
	var ourMBs, libMBs float64
	b.ResetTimer()
	for range b.N {
		logins, mbs := stormOurs(b, d.Addr(), testConfig(d))
		ourLogin, ourMBs = append(ourLogin, logins...), ourMBs+mbs
		libLogin = append(libLogin, stormInq(b, fmt.Sprintf("iscsi://%s/%s/%d", d.Addr(), d.IQN, d.LUN))...)
		libMBs += stormPerf(b, fmt.Sprintf("iscsi://%s/%s/%d", d.Addr(), d.IQN, d.LUN))
	}
	b.StopTimer()
	n := float64(b.N)
	p := func(ds []time.Duration, q float64) float64 {
		slices.Sort(ds)
		return ds[int(q*float64(len(ds)-1))].Seconds() * 1000
	}
	b.ReportMetric(p(ourLogin, 0.5), "login-p50-ms")
	b.ReportMetric(p(ourLogin, 0.99), "login-p99-ms")
	b.ReportMetric(p(libLogin, 0.5), "libiscsi-login-p50-ms")
	b.ReportMetric(p(libLogin, 0.99), "libiscsi-login-p99-ms")
	b.ReportMetric(ourMBs/n, "MB/s")
	b.ReportMetric(libMBs/n, "libiscsi-MB/s")
	b.ReportMetric(ourMBs/libMBs, "ratio")
	fmt.Printf("boot storm, %d sessions at once on one tgtd: login p50/p99 ours %.0f/%.0f ms, libiscsi (iscsi-inq, incl. its process start) %.0f/%.0f ms; aggregate read ours %.0f MB/s vs %d iscsi-perf %.0f MB/s (%.2fx); 0 failures\n",
		stormSessions, p(ourLogin, 0.5), p(ourLogin, 0.99), p(libLogin, 0.5), p(libLogin, 0.99),
		ourMBs/n, stormSessions, libMBs/n, ourMBs/libMBs)
}

// stormOurs logs in stormSessions sessions at once, then each reads stormBytes
// from its own part of the LUN. Any failure fails the benchmark.
func stormOurs(b *testing.B, addr string, base Config) (logins []time.Duration, mbs float64) {
	logins = make([]time.Duration, stormSessions)
	var wg sync.WaitGroup
	start := make(chan struct{})
	var readStart time.Time
	var mu sync.Mutex
	for i := range stormSessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := base
			cfg.Logf = func(string, ...any) {}
			cfg.ISID = [6]byte{0x80, 0, 0, 0, byte(i >> 8), byte(i)}
			cfg.InitiatorName = "iqn.2026-01.org.isboot.test:storm-" + strconv.Itoa(i)
			<-start
			t0 := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			s, err := Dial(ctx, cfg)
			cancel()
			if err != nil {
				b.Errorf("session %d: %v", i, err)
				return
			}
			defer s.Close()
			logins[i] = time.Since(t0)
			mu.Lock()
			if readStart.IsZero() {
				readStart = time.Now()
			}
			mu.Unlock()
			l := s.LUN()
			buf := make([]byte, 1<<20)
			base := int64(i) % (l.Size() / stormBytes) * stormBytes
			for off := int64(0); off < stormBytes; off += int64(len(buf)) {
				if _, err := l.ReadAt(buf, base+off); err != nil {
					b.Errorf("session %d: read: %v", i, err)
					return
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	return logins, float64(stormSessions*stormBytes) / 1e6 / time.Since(readStart).Seconds()
}

// stormInq runs stormSessions iscsi-inq at once: each logs in, asks INQUIRY and logs
// out, so its run time is libiscsi's login plus a process start.
func stormInq(b *testing.B, url string) []time.Duration {
	ds := make([]time.Duration, stormSessions)
	var wg sync.WaitGroup
	for i := range stormSessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			out, err := exec.Command("iscsi-inq", "-i", "iqn.2026-01.org.isboot.test:inq-"+strconv.Itoa(i), url).CombinedOutput()
			if err != nil {
				b.Errorf("iscsi-inq %d: %v\n%s", i, err, out)
			}
			ds[i] = time.Since(t0)
		}()
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	return ds
}

// stormPerf runs stormSessions iscsi-perf readers (1 MiB, one in flight, as our
// sessions read) at once for a few seconds and returns their summed MB/s.
func stormPerf(b *testing.B, url string) float64 {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var total float64
	for i := range stormSessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := exec.Command("iscsi-perf", "-i", "iqn.2026-01.org.isboot.test:perf-"+strconv.Itoa(i),
				"-m", "1", "-b", "2048", "-t", "4", url).CombinedOutput()
			m := perfAverage.FindAllSubmatch(out, -1)
			if err != nil || len(m) == 0 {
				b.Errorf("iscsi-perf %d: %v\n%s", i, err, out)
				return
			}
			mb, _ := strconv.ParseFloat(string(m[len(m)-1][2]), 64)
			mu.Lock()
			total += mb
			mu.Unlock()
		}()
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	return total
}
