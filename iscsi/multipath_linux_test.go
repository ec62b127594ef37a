package iscsi

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/tcpproxy"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/iscsi/pipebuf"
)

// The multipath tests take their ports from the fleet multipath slice (TCP
// 13580-13583, tgtd control port 69), not from this package's.

func startMultipathTgtd(t *testing.T) *testtarget.Tgtd {
	return testtarget.StartTgtd(t, testtarget.TgtdOptions{
		Port:        testtarget.FreePort(t, 13580, 13581),
		ControlPort: 69,
	})
}

func dialMultipath(t *testing.T, cfgs []Config) *Multipath {
	t.Helper()
	for i := range cfgs {
		cfgs[i].Logf = func(f string, a ...any) { t.Logf(time.Now().Format("15:04:05.000 ")+f, a...) }
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := DialMultipath(ctx, cfgs)
	if err != nil {
		t.Fatalf("DialMultipath: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// waitPaths polls until every path is in the wanted state.
func waitPaths(t *testing.T, m *Multipath, within time.Duration, want ...PathState) []PathStats {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ps := m.Paths()
		ok := len(ps) == len(want)
		for i := range ps {
			ok = ok && ps[i].State == want[i]
		}
		if ok {
			return ps
		}
		if time.Now().After(deadline) {
			t.Fatalf("paths after %v: %+v, want states %v", within, ps, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMultipathPathDiesMidWrite writes through two proxies to one tgtd LUN, kills
// one proxy in the middle, and checks that no I/O failed, every block holds what was
// written last, the path was marked failed, and it rejoined once the proxy returned.
func TestMultipathPathDiesMidWrite(t *testing.T) {
	tg := startMultipathTgtd(t)
	p0 := tcpproxy.Start(t, "127.0.0.1:0", tg.Addr())
	p1 := tcpproxy.Start(t, "127.0.0.1:0", tg.Addr())
	c0, c1 := testConfig(tg), testConfig(tg)
	c0.Portals, c1.Portals = []string{p0.Addr()}, []string{p1.Addr()}
	m := dialMultipath(t, []Config{c0, c1})
	waitPaths(t, m, 10*time.Second, PathActive, PathActive)

	const bs, blocks = 4096, 2048 // 8 MiB of blocks, each rewritten with a generation
	var (
		mu      sync.Mutex
		gen     [blocks]uint64 // last generation written whose write completed
		errs    atomic.Int64
		maxLat  atomic.Int64 // ns
		ios     atomic.Int64
		stop    = make(chan struct{})
		wg      sync.WaitGroup
		lastErr atomic.Value
	)
	writeBlock := func(b int, g uint64) []byte {
		buf := pattern(bs, uint64(b)<<32|g)
		return buf
	}
	note := func(start time.Time, err error) {
		if err != nil {
			errs.Add(1)
			lastErr.Store(err.Error())
		}
		if d := time.Since(start).Nanoseconds(); d > maxLat.Load() {
			maxLat.Store(d)
		}
		ios.Add(1)
	}
	// Four asynchronous writers (the NBD server's path) and one synchronous one,
	// each on blocks of its own, so the last completed generation is the truth.
	for w := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for g := uint64(1); ; g++ {
				for b := w; b < blocks; b += 5 {
					select {
					case <-stop:
						return
					default:
					}
					buf := writeBlock(b, g)
					start := time.Now()
					if w == 4 {
						_, err := m.WriteAt(buf, int64(b)*bs)
						note(start, err)
						if err == nil {
							mu.Lock()
							gen[b] = g
							mu.Unlock()
						}
						continue
					}
					done := make(chan error, 1)
					m.WriteAtAsync(buf, int64(b)*bs, false, func(_ int, err error) { done <- err })
					err := <-done
					note(start, err)
					if err == nil {
						mu.Lock()
						gen[b] = g
						mu.Unlock()
					}
				}
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond)
	before := m.Paths()
	if before[0].Writes == 0 || before[1].Writes == 0 {
		t.Errorf("both paths should carry writes at once: %+v", before)
	}
	maxLat.Store(0)
	killAt := time.Now()
	p0.Kill()
	failed := waitPaths(t, m, 10*time.Second, PathFailed, PathActive)
	detect := time.Since(killAt)
	time.Sleep(1500 * time.Millisecond)
	stall := time.Duration(maxLat.Load())
	during := m.Paths()
	if during[1].Writes <= before[1].Writes {
		t.Errorf("path 1 carried no writes after path 0 died: %+v", during)
	}
	if err := p0.Revive(); err != nil {
		t.Fatal(err)
	}
	reviveAt := time.Now()
	waitPaths(t, m, 15*time.Second, PathActive, PathActive)
	rejoin := time.Since(reviveAt)
	mid := m.Paths()
	time.Sleep(1 * time.Second)
	close(stop)
	wg.Wait()
	after := m.Paths()
	if after[0].Writes <= mid[0].Writes {
		t.Errorf("path 0 carried no writes after it rejoined: %+v then %+v", mid, after)
	}
	if n := errs.Load(); n != 0 {
		t.Fatalf("%d of %d writes failed, last: %v", n, ios.Load(), lastErr.Load())
	}
	if failed[0].Failovers != 1 || after[0].Failovers != 1 || after[1].Failovers != 0 {
		t.Errorf("failovers: %+v", after)
	}
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	// Every block holds its last completed generation, through the initiator and in
	// the target's backing file.
	got := make([]byte, blocks*bs)
	if _, err := m.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	disk, err := os.ReadFile(tg.Backing())
	if err != nil {
		t.Fatal(err)
	}
	bad := 0
	for b := range blocks {
		want := writeBlock(b, gen[b])
		if gen[b] == 0 {
			want = make([]byte, bs)
		}
		if !bytes.Equal(got[b*bs:(b+1)*bs], want) || !bytes.Equal(disk[b*bs:(b+1)*bs], want) {
			bad++
		}
	}
	if bad != 0 {
		t.Fatalf("%d of %d blocks do not hold their last write", bad, blocks)
	}
	t.Logf("%d writes, none failed; path 0 failed %v after the kill; longest write across the kill %v; path 0 rejoined %v after the proxy returned; paths %+v",
		ios.Load(), detect.Round(time.Millisecond), stall.Round(time.Millisecond), rejoin.Round(time.Millisecond), after)
	if stall > 5*time.Second {
		t.Errorf("a write took %v across the path's death: want a few seconds at most", stall)
	}
}

// TestMultipathRefusesOtherUnit gives the second path a portal that leads to another
// logical unit: it is refused with one line naming both identities, and I/O goes on
// the first path alone.
func TestMultipathRefusesOtherUnit(t *testing.T) {
	tg := startMultipathTgtd(t)
	other := testtarget.StartGotgt(t, testtarget.GotgtOptions{Port: testtarget.FreePort(t, 13582, 13583)})
	c0, c1 := testConfig(tg), testConfig(other)
	m := dialMultipath(t, []Config{c0, c1})
	ps := waitPaths(t, m, 10*time.Second, PathActive, PathRefused)
	if !strings.Contains(ps[1].LastError, "another logical unit") || strings.Contains(ps[1].LastError, "\n") {
		t.Errorf("refusal: %q", ps[1].LastError)
	}
	buf := pattern(64<<10, 7)
	if _, err := m.WriteAt(buf, 1<<20); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(buf))
	if _, err := m.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, buf) {
		t.Fatalf("read back: %v, equal %v", err, bytes.Equal(got, buf))
	}
	if ps := m.Paths(); ps[0].Writes != 1 || ps[1].Writes != 0 || ps[1].Reads != 0 {
		t.Errorf("the refused path carried I/O: %+v", ps)
	}
	t.Logf("refused: %s", ps[1].LastError)
}

// TestMultipathNeedsDistinctISIDs: two paths that would reinstate each other's
// session are refused before any login.
func TestMultipathNeedsDistinctISIDs(t *testing.T) {
	c := Config{Portals: []string{"127.0.0.1:1"}, TargetName: "iqn.x:y", ISID: [6]byte{0x80, 1, 2, 3, 0, 0}}
	_, err := DialMultipath(context.Background(), []Config{c, c})
	if err == nil || !strings.Contains(err.Error(), "share initiator, target and ISID") {
		t.Fatalf("err = %v", err)
	}
	_, err = DialMultipath(context.Background(), nil)
	if err == nil {
		t.Fatal("no path accepted")
	}
}

// TestMultipathReadAtPipe reads through two proxies into pipes, as the NBD server
// splices, and cuts path 0 in the middle of a read's data: every read completes with
// the bytes written, those the dead path had started (one with part of its data
// already in its pipe) going to the other path.
func TestMultipathReadAtPipe(t *testing.T) {
	tg := startMultipathTgtd(t)
	p0 := newFaultProxy(t, tg.Addr())
	p1 := tcpproxy.Start(t, "127.0.0.1:0", tg.Addr())
	c0, c1 := testConfig(tg), testConfig(tg)
	c0.Portals, c1.Portals = []string{p0.Addr()}, []string{p1.Addr()}
	m := dialMultipath(t, []Config{c0, c1})
	waitPaths(t, m, 10*time.Second, PathActive, PathActive)

	extents := pipeExtents(40, 64<<10, 260<<10, 1<<20, 1<<20+4096, 512<<10)
	for i, e := range extents {
		if _, err := m.WriteAt(pattern(e.size, uint64(i)), e.off); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	pipes := make([]*pipebuf.Pipe, len(extents))
	for i := range pipes {
		pipes[i] = new(pipebuf.Pipe)
		defer pipes[i].Close()
	}
	readAll := func(round int, during func()) {
		t.Helper()
		errs := make([]error, len(extents))
		var wg sync.WaitGroup
		for i, e := range extents {
			pipes[i].Reset()
			wg.Add(1)
			if !m.ReadAtPipe(pipes[i], e.size, e.off, func(_ int, err error) { errs[i] = err; wg.Done() }) {
				t.Fatalf("ReadAtPipe refused %d bytes", e.size)
			}
		}
		if during != nil {
			during()
		}
		wg.Wait()
		for i, e := range extents {
			if errs[i] != nil {
				t.Fatalf("round %d, read %d: %v", round, i, errs[i])
			}
			got := make([]byte, e.size+1)
			n, err := pipes[i].Read(got)
			if err != nil || n != e.size || !bytes.Equal(got[:n], pattern(e.size, uint64(i))) {
				t.Fatalf("round %d, extent %d (%d bytes): pipe held %d bytes, other than written (%v)", round, i, e.size, n, err)
			}
		}
	}
	readAll(0, nil)
	before := m.Paths()
	if before[0].Reads == 0 || before[1].Reads == 0 {
		t.Errorf("both paths should carry pipe reads: %+v", before)
	}
	// Cut path 0 a megabyte and a bit into the round's replies, inside a Data-In: that
	// read's pipe holds part of its data when it is reissued on path 1. The path
	// stays down (its logins go through the proxy, which cuts no new link, but the
	// upstream is gone) until the round is over.
	p0.SetUpstream("127.0.0.1:1")
	p0.CutRepliesAfter(1<<20 + 100<<10)
	readAll(1, nil)
	after := waitPaths(t, m, 10*time.Second, PathFailed, PathActive)
	if after[0].Failovers != 1 || after[0].Errors == 0 {
		t.Errorf("path 0 should have failed over once, with reads in flight: %+v", after)
	}
	readAll(2, nil)
	if got := m.Paths(); got[1].Reads <= after[1].Reads {
		t.Errorf("path 1 carried no reads after path 0 died: %+v", got)
	}
	t.Logf("paths: %+v", m.Paths())
	if m.ReadAtPipe(new(pipebuf.Pipe), m.ref.maxXfer+m.BlockSize(), 0, func(int, error) {}) {
		t.Error("a read above the maximum transfer was taken")
	}
}
