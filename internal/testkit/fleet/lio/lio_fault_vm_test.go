package lio_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/liotarget"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/iscsi"
)

// load keeps writers busy on their own slots of a LUN, each write followed by a
// read-back of one of its earlier slots, and remembers what every acknowledged
// write put where.
type load struct {
	l        *iscsi.LUN
	slotSize int
	perW     int // slots per writer

	mu    sync.Mutex
	acked map[int]uint64 // slot -> seed of its last acknowledged write
	worst time.Duration  // the slowest I/O since the last take
	errs  []error

	ops      atomic.Uint64
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

func startLoad(l *iscsi.LUN, writers, perW, slotSize int) *load {
	ld := &load{l: l, slotSize: slotSize, perW: perW, acked: map[int]uint64{}, stop: make(chan struct{})}
	for w := range writers {
		ld.wg.Add(1)
		go ld.writer(w)
	}
	return ld
}

func (ld *load) writer(w int) {
	defer ld.wg.Done()
	r := rand.New(rand.NewPCG(uint64(w), 17))
	got := make([]byte, ld.slotSize)
	for seq := uint64(1); ; seq++ {
		select {
		case <-ld.stop:
			return
		default:
		}
		slot := w*ld.perW + r.IntN(ld.perW)
		seed := uint64(w)<<32 | seq
		t0 := time.Now()
		_, err := ld.l.WriteAt(pattern(ld.slotSize, seed), int64(slot*ld.slotSize))
		ld.note(time.Since(t0), err)
		if err != nil {
			return
		}
		ld.mu.Lock()
		ld.acked[slot] = seed
		check := w*ld.perW + r.IntN(ld.perW)
		want, ok := ld.acked[check]
		ld.mu.Unlock()
		if !ok {
			continue
		}
		t0 = time.Now()
		_, err = ld.l.ReadAt(got, int64(check*ld.slotSize))
		ld.note(time.Since(t0), err)
		if err != nil {
			return
		}
		if !bytes.Equal(got, pattern(ld.slotSize, want)) {
			ld.note(0, fmt.Errorf("slot %d read back other data than its last acknowledged write", check))
			return
		}
	}
}

func (ld *load) note(d time.Duration, err error) {
	ld.ops.Add(1)
	ld.mu.Lock()
	defer ld.mu.Unlock()
	ld.worst = max(ld.worst, d)
	if err != nil {
		ld.errs = append(ld.errs, err)
	}
}

// takeWorst returns the slowest I/O since the last call and starts over.
func (ld *load) takeWorst() time.Duration {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	w := ld.worst
	ld.worst = 0
	return w
}

// progress waits until n more I/Os completed, or fails after timeout.
func (ld *load) progress(t *testing.T, n uint64, timeout time.Duration) {
	t.Helper()
	start := ld.ops.Load()
	deadline := time.Now().Add(timeout)
	for ld.ops.Load() < start+n {
		if time.Now().After(deadline) {
			t.Fatalf("I/O stuck: %d of %d I/Os in %v", ld.ops.Load()-start, n, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// finish stops the writers (once; a failed test's defer calls it again).
func (ld *load) finish() []error {
	ld.stopOnce.Do(func() { close(ld.stop) })
	ld.wg.Wait()
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return ld.errs
}

// TestLIOFaults: the initiator keeps writing and reading back while the LIO VM is
// frozen (SIGSTOP of QEMU: the TCP connection stays, nothing answers) for 8 s, and
// then killed (a power cut: the connection resets, no logout) and booted again on
// the same disk. No I/O may fail, the stalls must show the faults hit, the session
// must log in to the new LIO on its own, and every acknowledged write must read back
// from the session and from the disk file. The TPG runs with non-default login
// parameters (InitialR2T=No, larger bursts, several R2Ts), which the initiator must
// negotiate to.
func TestLIOFaults(t *testing.T) {
	const slotSize, writers, perW = 128 << 10, 4, 64
	disk := testtarget.CreateBacking(t, t.TempDir(), 64<<20)
	tg := liotarget.Start(t, liotarget.Options{
		Port: testtarget.FreePort(t, portLo, portHi), Disk: disk, LUN: 1, CHAP: chap, Mutual: mutual,
		Params: map[string]string{
			"InitialR2T": "No", "FirstBurstLength": "262144", "MaxBurstLength": "1048576", "MaxOutstandingR2T": "4",
		},
	})
	s := dial(t, config(t, tg))
	defer s.Close() // before the cleanup kills the restarted VM, which it would log about
	checkParams(t, s, map[string]string{
		"InitialR2T": "No", "ImmediateData": "Yes", "FirstBurstLength": "262144", "MaxBurstLength": "1048576",
		"MaxOutstandingR2T": "4",
	})
	ld := startLoad(s.LUN(), writers, perW, slotSize)
	defer ld.finish()
	ld.progress(t, 100, 60*time.Second)
	time.Sleep(2 * time.Second)
	t.Logf("before the faults: %d I/Os, slowest %v", ld.ops.Load(), ld.takeWorst().Round(time.Millisecond))

	tg.Pause()
	const frozen = 8 * time.Second
	time.Sleep(frozen)
	tg.Resume()
	t0 := time.Now()
	ld.progress(t, 100, 120*time.Second)
	time.Sleep(2 * time.Second)
	worst := ld.takeWorst()
	t.Logf("frozen %v: I/O resumed %v after SIGCONT, slowest I/O %v, %d reconnects",
		frozen, time.Since(t0).Round(time.Millisecond), worst.Round(time.Millisecond), s.Stats().Reconnects)
	if worst < frozen-time.Second {
		t.Errorf("slowest I/O across the freeze %v: the freeze of %v missed the load", worst, frozen)
	}

	before := s.Stats().Reconnects
	t0 = time.Now()
	tg.Kill()
	time.Sleep(3 * time.Second)
	tg.Restart()
	ld.progress(t, 100, 180*time.Second)
	t.Logf("killed, down 3 s, booted again in %v: I/O flowing %v after the kill",
		tg.Boots[len(tg.Boots)-1].Round(100*time.Millisecond), time.Since(t0).Round(100*time.Millisecond))
	time.Sleep(2 * time.Second)
	worst = ld.takeWorst()
	errs := ld.finish()
	st := s.Stats()
	t.Logf("after the restart: slowest I/O %v; session: %d commands, %d errors, %d reconnects (%d for the kill); %d slots written",
		worst.Round(time.Millisecond), st.Commands, st.Errors, st.Reconnects, st.Reconnects-before, len(ld.acked))
	for _, err := range errs {
		t.Errorf("I/O failed: %v", err)
	}
	if st.Reconnects <= before {
		t.Errorf("no reconnect counted for the kill")
	}
	if worst < 3*time.Second {
		t.Errorf("slowest I/O across the kill %v: the kill missed the load", worst)
	}
	checkParams(t, s, map[string]string{"InitialR2T": "No", "MaxBurstLength": "1048576", "MaxOutstandingR2T": "4"})

	// Every acknowledged write, through the new session and in the file.
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, file := make([]byte, slotSize), make([]byte, slotSize)
	bad := 0
	for slot, seed := range ld.acked {
		want := pattern(slotSize, seed)
		if _, err := s.LUN().ReadAt(got, int64(slot*slotSize)); err != nil {
			t.Fatalf("read slot %d: %v", slot, err)
		}
		if _, err := f.ReadAt(file, int64(slot*slotSize)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) || !bytes.Equal(file, want) {
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d slots lost their last acknowledged write", bad, len(ld.acked))
	}
}
