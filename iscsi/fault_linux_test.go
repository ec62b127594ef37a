package iscsi

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/testtarget"
)

// loadResult is what a writer wrote, to check after the faults.
type loadResult struct {
	off int64
	n   int
	sum [32]byte
}

// runLoad runs writers writing fresh extents in their own regions until stop is
// closed, with a read now and then; a writer that reaches the end of its region
// starts over at its beginning, so load never runs out before the fault on a
// fast machine. Any error the caller sees fails the test. The results returned
// are the extents that no later write overwrote.
func runLoad(t *testing.T, l *LUN, writers int, stop <-chan struct{}) func() []loadResult {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var results []loadResult
	var failed atomic.Value
	region := l.Size() / int64(writers) &^ 4095
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			off := int64(w) * region
			end := off + region
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				n := (1 + r.IntN(64)) * 4096
				if off+int64(n) > end {
					off = int64(w) * region
				}
				b := pattern(n, uint64(w)<<32|uint64(i))
				if _, err := l.WriteAt(b, off); err != nil {
					failed.Store(fmt.Errorf("writer %d: write at %d: %w", w, off, err))
					return
				}
				if i%4 == 3 {
					got := make([]byte, n)
					if _, err := l.ReadAt(got, off); err != nil {
						failed.Store(fmt.Errorf("writer %d: read at %d: %w", w, off, err))
						return
					}
					if sum(got) != sum(b) {
						failed.Store(fmt.Errorf("writer %d: read back at %d differs", w, off))
						return
					}
				}
				mu.Lock()
				results = append(results, loadResult{off, n, sum(b)})
				mu.Unlock()
				off += int64(n)
			}
		}(w)
	}
	return func() []loadResult {
		wg.Wait()
		if err, ok := failed.Load().(error); ok {
			t.Fatalf("the caller saw an error: %v", err)
		}
		return latestExtents(results)
	}
}

// latestExtents drops every extent that a later write overlapped, so what is
// left must read back exactly as written.
func latestExtents(results []loadResult) []loadResult {
	owner := map[int64]int{} // 4 KiB block -> index of the last write covering it
	for i, r := range results {
		for b := r.off / 4096; b < (r.off+int64(r.n))/4096; b++ {
			owner[b] = i
		}
	}
	var kept []loadResult
	for i, r := range results {
		intact := true
		for b := r.off / 4096; b < (r.off+int64(r.n))/4096 && intact; b++ {
			intact = owner[b] == i
		}
		if intact {
			kept = append(kept, r)
		}
	}
	return kept
}

// verifyLoad reads every extent back (on a fresh session) and compares checksums.
func verifyLoad(t *testing.T, l *LUN, results []loadResult) {
	t.Helper()
	if len(results) == 0 {
		t.Fatalf("no writes completed")
	}
	for _, r := range results {
		b := make([]byte, r.n)
		if _, err := l.ReadAt(b, r.off); err != nil {
			t.Fatalf("verify read at %d: %v", r.off, err)
		}
		if sum(b) != r.sum {
			t.Fatalf("%d bytes at %d do not hold what was written", r.n, r.off)
		}
	}
	t.Logf("verified %d extents", len(results))
}

func faultConfig(tg testtarget.Target, portal string) Config {
	cfg := testConfig(tg)
	cfg.Portals = []string{portal}
	cfg.Retry = RetryPolicy{InitialBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	cfg.NopInterval = 300 * time.Millisecond
	cfg.NopTimeout = 700 * time.Millisecond
	cfg.QueueDepth = 32
	return cfg
}

func waitReconnects(t *testing.T, s *Session, n uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for s.Stats().Reconnects < n || s.State() != "serving" {
		if time.Now().After(deadline) {
			t.Fatalf("still %d reconnects, state %s", s.Stats().Reconnects, s.State())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFaultCutMidWrite(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{Size: 128 << 20})
	p := newFaultProxy(t, d.Addr())
	s := dial(t, faultConfig(d, p.Addr()))
	p.cutAfter.Store(3 << 20) // every connection dies after ~3 MB of writes
	stop := make(chan struct{})
	wait := runLoad(t, s.LUN(), 16, stop)
	waitReconnects(t, s, 3)
	close(stop)
	results := wait()
	p.cutAfter.Store(0)
	verifyLoad(t, s.LUN(), results)
	if st := s.Stats(); st.Errors != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestFaultStallPastNOPDeadline(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{Size: 64 << 20})
	p := newFaultProxy(t, d.Addr())
	s := dial(t, faultConfig(d, p.Addr()))
	stop := make(chan struct{})
	wait := runLoad(t, s.LUN(), 8, stop)
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	p.StallAll()
	waitReconnects(t, s, 1)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("stall detected only after %v", d)
	}
	// Idle stall too: no I/O, only pings.
	close(stop)
	results := wait()
	p.StallAll()
	waitReconnects(t, s, 2)
	verifyLoad(t, s.LUN(), results)
}

func TestFaultResetUnderLoad(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{Size: 128 << 20,
		Params: [][2]string{{"HeaderDigest", "CRC32C,None"}, {"DataDigest", "CRC32C,None"}}})
	p := newFaultProxy(t, d.Addr())
	cfg := faultConfig(d, p.Addr())
	cfg.HeaderDigest, cfg.DataDigest = DigestCRC32C, DigestCRC32C
	s := dial(t, cfg)
	stop := make(chan struct{})
	wait := runLoad(t, s.LUN(), 32, stop)
	for i := uint64(1); i <= 8; i++ {
		time.Sleep(150 * time.Millisecond)
		p.CutAll()
		// Cut the next connection only once this one is back: on a loaded
		// machine a fixed cadence cut the same reconnect several times and
		// fewer than four reconnects were counted.
		waitReconnects(t, s, i)
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	results := wait()
	verifyLoad(t, s.LUN(), results)
	if st := s.Stats(); st.Reconnects < 4 || st.Errors != 0 {
		t.Fatalf("stats: %+v", st)
	}
	// A second, independent session sees the same bytes.
	verifyLoad(t, dial(t, testConfig(d)).LUN(), results)
}

func TestFaultRestartTgtd(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{Size: 64 << 20})
	cfg := faultConfig(d, d.Addr())
	s := dial(t, cfg)
	loadThrough(t, s, 16, d.Restart)
}

// loadThrough runs writers across fault (which must cost at least one reconnect)
// and checks every completed write afterwards.
func loadThrough(t *testing.T, s *Session, writers int, fault func()) {
	t.Helper()
	stop := make(chan struct{})
	wait := runLoad(t, s.LUN(), writers, stop)
	time.Sleep(250 * time.Millisecond)
	fault()
	waitReconnects(t, s, 1)
	time.Sleep(250 * time.Millisecond)
	close(stop)
	verifyLoad(t, s.LUN(), wait())
}

// TestPortalFailover: the first portal is dead, so the session logs in through the
// second, and after a reset it comes back through the portals in turn.
func TestPortalFailover(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{})
	dead := testtarget.FreePort(t, 13260, 13279)
	p := newFaultProxy(t, d.Addr())
	cfg := faultConfig(d, "")
	cfg.Portals = []string{fmt.Sprintf("127.0.0.1:%d", dead), p.Addr()}
	s := dial(t, cfg)
	if pm := paramMap(s); pm["portal"] != p.Addr() {
		t.Fatalf("portal %q, want %q", pm["portal"], p.Addr())
	}
	p.CutAll()
	waitReconnects(t, s, 1)
	if _, err := s.LUN().WriteAt(pattern(4096, 5), 0); err != nil {
		t.Fatal(err)
	}
}

// TestPortalFailoverPastRefusal: a portal that refuses the first login for good
// (a target that does not know our IQN) does not end the login while another
// portal (iBFT target1) still leads to the LUN; only when every portal refuses
// does Dial fail, at once, with the target's reason.
func TestPortalFailoverPastRefusal(t *testing.T) {
	good := startTgtd(t, testtarget.TgtdOptions{})
	stranger := startTgtd(t, testtarget.TgtdOptions{IQN: "iqn.2026-01.org.isboot.test:stranger"})
	cfg := faultConfig(good, "")
	cfg.Portals = []string{stranger.Addr(), good.Addr()}
	s := dial(t, cfg)
	if pm := paramMap(s); pm["portal"] != good.Addr() {
		t.Fatalf("portal %q, want %q", pm["portal"], good.Addr())
	}

	cfg.Portals = []string{stranger.Addr(), stranger.Addr()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if s, err := Dial(ctx, cfg); err == nil {
		s.Close()
		t.Fatal("Dial succeeded with every portal refusing the target")
	} else if ctx.Err() != nil {
		t.Fatalf("Dial kept retrying a permanent refusal: %v", err)
	} else {
		t.Logf("error as expected: %v", err)
	}
}

// TestRetryBounded: with a bounded policy a dead target ends in a clear error.
func TestRetryBounded(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{})
	cfg := faultConfig(d, d.Addr())
	cfg.Retry = RetryPolicy{MaxElapsed: 500 * time.Millisecond, InitialBackoff: 50 * time.Millisecond}
	s := dial(t, cfg)
	d.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := s.LUN().ReadAt(make([]byte, 4096), 0); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("read on a dead target succeeded")
		}
		t.Logf("error as expected: %v", err)
	case <-ctx.Done():
		t.Fatalf("bounded retry did not give up")
	}
	if s.State() != "failed" {
		t.Fatalf("state %s, want failed", s.State())
	}
}

// TestCommandTimeoutEscalates: with pings off, a frozen target leaves commands
// unanswered; each times out, ABORT TASK and LUN RESET get no answer either, the
// connection is dropped, and once the target thaws every write completes.
func TestCommandTimeoutEscalates(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{Size: 64 << 20})
	cfg := faultConfig(d, d.Addr())
	cfg.NopInterval = time.Hour
	cfg.NopTimeout = 400 * time.Millisecond
	cfg.CommandTimeout = time.Second
	cfg.LoginTimeout = time.Second
	var mu sync.Mutex
	var log []string
	cfg.Logf = func(f string, a ...any) {
		mu.Lock()
		log = append(log, fmt.Sprintf(f, a...))
		mu.Unlock()
	}
	logged := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(log, "\n")
	}
	s := dial(t, cfg)
	loadThrough(t, s, 8, func() {
		// Stay paused until the whole ladder has run: a fixed pause raced
		// the escalation on a loaded CI machine (the LUN reset then succeeded
		// after the resume and no reconnect was needed).
		d.Pause()
		defer d.Resume()
		deadline := time.Now().Add(15 * time.Second)
		for !strings.Contains(logged(), "LUN reset failed") && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	})
	all := logged()
	for _, want := range []string{"timed out", "resetting the LUN", "LUN reset failed"} {
		if !strings.Contains(all, want) {
			t.Errorf("log lacks %q:\n%s", want, all)
		}
	}
}

// TestLoginRedirect: a portal that only answers "target moved temporarily" (status
// 0x0101 with TargetAddress) sends the initiator to the real target.
func TestLoginRedirect(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var redirected atomic.Int32
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			r := pduReader{r: nc, maxData: 8192}
			if r.readHeader() == nil && r.readData(make([]byte, r.hdr.dataLen())) == nil {
				var h bhs
				h.reset(opLoginResp)
				copy(h[8:14], r.hdr[8:14])
				h.setU32(16, r.hdr.itt())
				h[36], h[37] = 1, 1
				w := pduWriter{w: nc}
				w.writePDU(&h, encodeText([]KV{{"TargetAddress", d.Addr() + ",1"}}))
				w.flush()
				redirected.Add(1)
			}
			nc.Close()
		}
	}()
	t.Cleanup(func() { l.Close() })
	s := dial(t, faultConfig(d, l.Addr().String()))
	if pm := paramMap(s); pm["portal"] != d.Addr() || redirected.Load() != 1 {
		t.Fatalf("portal %q after %d redirects", pm["portal"], redirected.Load())
	}
	if _, err := s.LUN().WriteAt(pattern(8192, 3), 0); err != nil {
		t.Fatal(err)
	}
}

// TestIdentityChangeRefused: if the target comes back with a different LUN behind
// the same name, nothing is reissued to it and the caller gets a clear error.
func TestIdentityChangeRefused(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{LUNParams: "scsi_sn=isboot-disk-a"})
	s := dial(t, faultConfig(d, d.Addr()))
	l := s.LUN()
	if _, err := l.WriteAt(pattern(4096, 1), 0); err != nil {
		t.Fatal(err)
	}
	d.SetLUNParams("scsi_sn=isboot-disk-b")
	d.Restart()
	_, err := l.WriteAt(pattern(4096, 2), 0)
	if err == nil || !strings.Contains(err.Error(), "LUN identity changed") {
		t.Fatalf("write after the LUN changed: %v", err)
	}
	if s.State() != "failed" {
		t.Fatalf("state %s", s.State())
	}
	b := make([]byte, 4096)
	f, _ := os.Open(d.Backing())
	defer f.Close()
	f.ReadAt(b, 0)
	if sum(b) != sum(pattern(4096, 1)) {
		t.Fatalf("the write went to the changed LUN")
	}
}

// TestReconnectRefusedDigest: the session's next login reaches a target (the same
// LUN, the same name) configured without the digest the session requires. Under a
// bounded policy that ends the session at once with the refusal; under the unbounded
// one (a root device) the session keeps trying, and the I/O waiting on it completes
// once the target that offers the digest is back.
func TestReconnectRefusedDigest(t *testing.T) {
	const iqn = "iqn.2026-01.org.isboot.test:digests"
	good := startTgtd(t, testtarget.TgtdOptions{IQN: iqn, Params: [][2]string{{"HeaderDigest", "CRC32C"}}})
	bad := startTgtd(t, testtarget.TgtdOptions{IQN: iqn, Backing: good.Backing(), Params: [][2]string{{"HeaderDigest", "None"}}})
	start := func(t *testing.T, bounded bool) (*Session, *faultProxy) {
		p := newFaultProxy(t, good.Addr())
		cfg := faultConfig(good, p.Addr())
		cfg.HeaderDigest = DigestCRC32C
		if bounded {
			cfg.Retry.MaxElapsed = time.Minute
		}
		s := dial(t, cfg)
		p.SetUpstream(bad.Addr())
		p.CutAll()
		return s, p
	}
	t.Run("bounded", func(t *testing.T) {
		s, _ := start(t, true)
		t0 := time.Now()
		_, err := s.LUN().ReadAt(make([]byte, 4096), 0)
		t.Logf("read failed after %v: %v", time.Since(t0).Round(time.Millisecond), err)
		if err == nil || !strings.Contains(err.Error(), "target refused HeaderDigest=CRC32C (answered None)") {
			t.Fatalf("read: %v", err)
		}
		if el := time.Since(t0); el > 5*time.Second {
			t.Errorf("failed after %v", el)
		}
	})
	t.Run("forever", func(t *testing.T) {
		s, p := start(t, false)
		done := make(chan error, 1)
		go func() { _, err := s.LUN().ReadAt(make([]byte, 4096), 0); done <- err }()
		select {
		case err := <-done:
			t.Fatalf("read ended while the target refuses the digest: %v", err)
		case <-time.After(2 * time.Second):
		}
		if st := s.State(); st != "reconnecting" {
			t.Fatalf("state %s, want reconnecting", st)
		}
		p.SetUpstream(good.Addr())
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("read after the target came back: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("no recovery 20 s after the target offered CRC32C again")
		}
	})
}

// TestCloseWhileReconnecting: Close ends a session that is retrying forever, and
// the I/O waiting on it gets ErrClosed.
func TestCloseWhileReconnecting(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{})
	cfg := faultConfig(d, d.Addr())
	cfg.Retry = RetryPolicy{} // forever
	s := dial(t, cfg)
	d.Stop()
	done := make(chan error, 1)
	go func() { _, err := s.LUN().ReadAt(make([]byte, 4096), 0); done <- err }()
	// Close only once the session is retrying: a fixed pause could end before
	// the loss was noticed on a loaded machine, and then no reconnect was cut short.
	deadline := time.Now().Add(10 * time.Second)
	for s.State() != "reconnecting" {
		if time.Now().After(deadline) {
			t.Fatalf("state %s 10s after the target died, want reconnecting", s.State())
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // a few dial attempts into the retry loop
	start := time.Now()
	s.Close()
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("Close took %v", el)
	}
	if err := <-done; err != ErrClosed {
		t.Fatalf("waiting read: %v, want ErrClosed", err)
	}
}
