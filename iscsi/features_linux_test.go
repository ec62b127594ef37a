package iscsi

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/testtarget"
)

func paramMap(s *Session) map[string]string {
	m := map[string]string{}
	for _, kv := range s.Params() {
		m[kv.Key] = kv.Value
	}
	return m
}

func TestTgtdCHAP(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{
		CHAP:       testtarget.CHAP{User: "alice", Secret: "alice-secret-1"},
		MutualCHAP: testtarget.CHAP{User: "tgt", Secret: "target-secret-2"},
	})
	base := testConfig(d)
	base.Retry = RetryPolicy{MaxAttempts: 1}

	t.Run("one-way", func(t *testing.T) {
		cfg := base
		cfg.CHAPUser, cfg.CHAPSecret = "alice", "alice-secret-1"
		s := dial(t, cfg)
		if p := paramMap(s); p["AuthMethod"] != "CHAP" || p["CHAP_A"] != "5" {
			t.Fatalf("params: %v", p)
		}
		exerciseLUN(t, s, "")
	})
	t.Run("mutual", func(t *testing.T) {
		cfg := base
		cfg.CHAPUser, cfg.CHAPSecret = "alice", "alice-secret-1"
		cfg.RevCHAPUser, cfg.RevCHAPSecret = "tgt", "target-secret-2"
		// One attempt (base.Retry): tgtd must accept the algorithm it picks the first
		// time, with no second login.
		s := dial(t, cfg)
		if p := paramMap(s); p["CHAP_A"] != "5" {
			t.Errorf("tgtd chose CHAP_A=%s from our offer %s", p["CHAP_A"], chapOffer)
		}
		if _, err := s.LUN().WriteAt(pattern(4096, 7), 0); err != nil {
			t.Fatal(err)
		}
	})
	errCases := []struct {
		name, user, secret, ruser, rsecret, want string
	}{
		{"wrong secret", "alice", "wrong-secret-9", "", "", "authentication failed"},
		{"unknown user", "mallory", "alice-secret-1", "", "", "authentication failed"},
		{"no credentials", "", "", "", "", "authentication failed"},
		{"target fails mutual", "alice", "alice-secret-1", "tgt", "not-the-secret", "target failed to authenticate"},
		{"wrong target name", "alice", "alice-secret-1", "someone", "target-secret-2", "target failed to authenticate"},
	}
	for _, c := range errCases {
		t.Run(c.name, func(t *testing.T) {
			cfg := base
			cfg.CHAPUser, cfg.CHAPSecret, cfg.RevCHAPUser, cfg.RevCHAPSecret = c.user, c.secret, c.ruser, c.rsecret
			var logged strings.Builder
			cfg.Logf = func(f string, a ...any) { fmt.Fprintf(&logged, f+"\n", a...) }
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := Dial(ctx, cfg)
			if err == nil {
				s.Close()
				t.Fatalf("login succeeded")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q, want it to say %q", err, c.want)
			}
			for _, secret := range []string{"alice-secret-1", "target-secret-2", "wrong-secret-9", "not-the-secret"} {
				if strings.Contains(err.Error(), secret) || strings.Contains(logged.String(), secret) {
					t.Fatalf("a secret leaked into the error or log")
				}
			}
		})
	}
}

func TestTgtdDigests(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{Params: [][2]string{{"HeaderDigest", "CRC32C"}, {"DataDigest", "CRC32C"}}})
	cfg := testConfig(d)
	cfg.HeaderDigest, cfg.DataDigest = DigestCRC32C, DigestCRC32C
	s := dial(t, cfg)
	if p := paramMap(s); p["HeaderDigest"] != "CRC32C" || p["DataDigest"] != "CRC32C" {
		t.Fatalf("digests not negotiated: %v", p)
	}
	exerciseLUN(t, s, d.Backing())
}

// TestTgtdRequiredDigestRefused: tgtd configured without digests answers None to a
// required CRC32C. The login fails at once, for good, naming the key, although the
// policy retries forever; a digest the initiator only prefers is dropped.
func TestTgtdRequiredDigestRefused(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{Params: [][2]string{{"HeaderDigest", "None"}, {"DataDigest", "None"}}})
	for _, c := range []struct {
		header, data Digest
		want         string
	}{
		{DigestCRC32C, DigestAuto, "iscsi: target refused HeaderDigest=CRC32C (answered None)"},
		{DigestAuto, DigestCRC32C, "iscsi: target refused DataDigest=CRC32C (answered None)"},
	} {
		cfg := testConfig(d)
		cfg.HeaderDigest, cfg.DataDigest = c.header, c.data
		cfg.Retry = RetryPolicy{} // forever
		cfg.Logf = t.Logf
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		start := time.Now()
		s, err := Dial(ctx, cfg)
		took := time.Since(start)
		cancel()
		if err == nil {
			s.Close()
			t.Fatalf("login succeeded with a required digest tgtd does not do")
		}
		t.Logf("failed in %v: %v", took.Round(time.Millisecond), err)
		if err.Error() != c.want || !IsPermanent(err) {
			t.Errorf("error %q (permanent %v), want %q", err, IsPermanent(err), c.want)
		}
		if took > 5*time.Second {
			t.Errorf("took %v to fail", took)
		}
	}
	cfg := testConfig(d)
	cfg.HeaderDigest, cfg.DataDigest = DigestPreferCRC32C, DigestPreferCRC32C
	s := dial(t, cfg)
	if p := paramMap(s); p["HeaderDigest"] != "None" || p["DataDigest"] != "None" {
		t.Fatalf("preferred digests: %v", p)
	}
}

// TestTgtdSolicitedOnly forces every byte of a write through R2Ts: no immediate or
// unsolicited data, 4 KiB PDUs and 8 KiB bursts, so a 3 MiB write takes 384 R2Ts,
// up to 4 of them outstanding at once.
func TestTgtdSolicitedOnly(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{Params: [][2]string{
		{"InitialR2T", "Yes"}, {"ImmediateData", "No"},
		{"MaxRecvDataSegmentLength", "4096"}, {"MaxBurstLength", "8192"}, {"FirstBurstLength", "4096"},
		{"MaxOutstandingR2T", "4"},
	}})
	s := dial(t, testConfig(d))
	p := paramMap(s)
	if p["InitialR2T"] != "Yes" || p["ImmediateData"] != "No" || p["TargetMaxRecvDataSegmentLength"] != "4096" || p["MaxBurstLength"] != "8192" || p["MaxOutstandingR2T"] != "4" {
		t.Fatalf("params: %v", p)
	}
	exerciseLUN(t, s, d.Backing())
	concurrentWriters(t, s, 16, 4)
}

// concurrentWriters runs writers goroutines, each writing rounds of random-sized
// blocks into its own region, then reads everything back and compares checksums.
func concurrentWriters(t *testing.T, s *Session, writers, rounds int) {
	t.Helper()
	l := s.LUN()
	region := l.Size() / int64(writers) &^ 4095
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	type extent struct {
		off int64
		sum [32]byte
		n   int
	}
	written := make([][]extent, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 42))
			base := int64(w) * region
			off := base
			for i := 0; i < rounds; i++ {
				n := (1 + r.IntN(64)) * 4096
				if off+int64(n) > base+region {
					break
				}
				b := pattern(n, uint64(w*1000+i))
				if _, err := l.WriteAt(b, off); err != nil {
					errs <- fmt.Errorf("writer %d: %w", w, err)
					return
				}
				written[w] = append(written[w], extent{off, sum(b), n})
				off += int64(n)
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for w := range written {
		for _, e := range written[w] {
			b := make([]byte, e.n)
			if _, err := l.ReadAt(b, e.off); err != nil {
				t.Fatalf("read back: %v", err)
			}
			if sum(b) != e.sum {
				t.Fatalf("writer %d: %d bytes at %d differ after read back", w, e.n, e.off)
			}
		}
	}
}

func TestTgtdConcurrentWriters(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{Size: 256 << 20})
	cfg := testConfig(d)
	cfg.QueueDepth = 32
	s := dial(t, cfg)
	concurrentWriters(t, s, 64, 8)
	if st := s.Stats(); st.Errors != 0 || st.Reconnects != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestIstgt(t *testing.T) {
	port := testtarget.FreePort(t, 13260, 13279)
	st := testtarget.StartIstgt(t, testtarget.IstgtOptions{Port: port,
		CHAP:       testtarget.CHAP{User: "bob", Secret: "bob-secret-123"},
		MutualCHAP: testtarget.CHAP{User: "istgt", Secret: "istgt-secret-45"}})
	cfg := testConfig(st)
	cfg.CHAPUser, cfg.CHAPSecret = "bob", "bob-secret-123"
	cfg.RevCHAPUser, cfg.RevCHAPSecret = "istgt", "istgt-secret-45"
	s := dial(t, cfg)
	exerciseLUN(t, s, "")
	concurrentWriters(t, s, 16, 4)

	bad := cfg
	bad.CHAPSecret = "bob-secret-xyz"
	bad.Retry = RetryPolicy{MaxAttempts: 1}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Dial(ctx, bad)
	var le *LoginError
	if !errors.As(err, &le) || le.Class != 2 {
		t.Fatalf("wrong secret against istgt: %v", err)
	}
}

// TestTgtdReadOnly checks MODE SENSE write protection is honoured.
func TestTgtdReadOnly(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{ReadOnly: true})
	s := dial(t, testConfig(d))
	if !s.LUN().ReadOnly() {
		t.Fatalf("LUN not reported read-only")
	}
	if _, err := s.LUN().WriteAt(make([]byte, 512), 0); err == nil {
		t.Fatalf("write to a read-only LUN succeeded")
	}
	if _, err := s.LUN().ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
}

// TestTargetNOPIn: tgtd pings every second and drops a connection after two
// unanswered pings; with our own pings off the session must answer its pings and
// stay up.
func TestTargetNOPIn(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{Params: [][2]string{{"nop_interval", "1"}, {"nop_count", "2"}}})
	cfg := testConfig(d)
	cfg.NopInterval = time.Hour
	s := dial(t, cfg)
	// Wait for three pings rather than a fixed 3.5 s: tgtd drops a connection at
	// its third ping if two went unanswered, and on a loaded machine its timer
	// may fire late.
	deadline := time.Now().Add(30 * time.Second)
	for s.targetPings.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := s.LUN().ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if n, st := s.targetPings.Load(), s.Stats(); n < 2 || st.Reconnects != 0 {
		t.Fatalf("%d target pings answered, %d reconnects", n, st.Reconnects)
	}
}

// TestTgtdUnsolicitedData: InitialR2T=No with small PDUs, so a write carries 8 KiB
// of immediate data, unsolicited Data-Out up to the 64 KiB first burst, and R2Ts
// for the rest.
func TestTgtdUnsolicitedData(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{Params: [][2]string{
		{"InitialR2T", "No"}, {"ImmediateData", "Yes"}, {"FirstBurstLength", "65536"},
		{"MaxRecvDataSegmentLength", "8192"}, {"MaxBurstLength", "131072"},
	}})
	s := dial(t, testConfig(d))
	p := paramMap(s)
	if p["InitialR2T"] != "No" || p["ImmediateData"] != "Yes" || p["FirstBurstLength"] != "65536" {
		t.Fatalf("params: %v", p)
	}
	exerciseLUN(t, s, d.Backing())
	concurrentWriters(t, s, 16, 4)
}
