// Package lio_test runs isboot against LIO, the Linux kernel's own iSCSI target,
// in a QEMU guest of its own (package liotarget): the host-side initiator logs in
// with mutual CHAP, moves and checks data and reports what LIO negotiated; the
// target VM is frozen and killed under I/O; and a second guest boots its root
// through isboot from the LIO VM.
package lio_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/liotarget"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
	"github.com/isboot/isboot/iscsi"
)

// This package's TCP ports (see the table in testtarget): 13620-13629; no tgtd.
const portLo, portHi = 13620, 13629

var (
	chap   = testtarget.CHAP{User: "lio-initiator", Secret: "lio-initiator-secret-1"}
	mutual = testtarget.CHAP{User: "lio-target", Secret: "lio-target-secret-22"}
)

func TestMain(m *testing.M) { os.Exit(vm.RunTests(m)) }

// config is a session to tg as its ACL's initiator with mutual CHAP.
func config(t testing.TB, tg *liotarget.Target) iscsi.Config {
	return iscsi.Config{
		Portals: []string{tg.Addr()}, TargetName: tg.TargetIQN(), LUN: tg.LUNNumber(),
		InitiatorName: tg.Initiator(),
		CHAPUser:      chap.User, CHAPSecret: chap.Secret,
		RevCHAPUser: mutual.User, RevCHAPSecret: mutual.Secret,
		Logf: func(f string, a ...any) { t.Logf(time.Now().Format("15:04:05.000 ")+f, a...) },
	}
}

func dial(t testing.TB, cfg iscsi.Config) *iscsi.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t0 := time.Now()
	s, err := iscsi.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("login to LIO: %v", err)
	}
	t.Logf("logged in to LIO in %v", time.Since(t0).Round(time.Millisecond))
	t.Cleanup(func() { s.Close() })
	return s
}

// params returns the session's negotiated keys as a map.
func params(s *iscsi.Session) map[string]string {
	m := map[string]string{}
	for _, kv := range s.Params() {
		m[kv.Key] = kv.Value
	}
	return m
}

// checkParams logs what was negotiated and compares the keys in want.
func checkParams(t *testing.T, s *iscsi.Session, want map[string]string) {
	t.Helper()
	got := params(s)
	var line []string
	for _, k := range []string{"AuthMethod", "CHAP_A", "HeaderDigest", "DataDigest", "InitialR2T", "ImmediateData",
		"MaxRecvDataSegmentLength", "TargetMaxRecvDataSegmentLength", "FirstBurstLength", "MaxBurstLength",
		"MaxOutstandingR2T", "DefaultTime2Wait", "DefaultTime2Retain", "ErrorRecoveryLevel", "tsih"} {
		line = append(line, k+"="+got[k])
	}
	t.Logf("negotiated with LIO: %s", strings.Join(line, " "))
	for k, v := range want {
		if got[k] != v {
			t.Errorf("negotiated %s=%q, want %q", k, got[k], v)
		}
	}
}

func pattern(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// TestLIOHostInitiator: the project's initiator against LIO's defaults. A wrong
// secret either way fails the login at once with one clear line; the right ones log
// in, INQUIRY and the VPD pages show LIO's disk with our serial, and data written in
// sizes from one block to past LIO's burst lengths (so R2T sequences) reads back
// from the session and from the disk file on the host.
func TestLIOHostInitiator(t *testing.T) {
	const size = 64 << 20
	disk := testtarget.CreateBacking(t, t.TempDir(), size)
	tg := liotarget.Start(t, liotarget.Options{Port: testtarget.FreePort(t, portLo, portHi), Disk: disk, CHAP: chap, Mutual: mutual})

	t.Run("wrong-secrets", func(t *testing.T) {
		// All permanent: LIO's refusals end Dial at once, and so does a failed check
		// of the target's own answer (a wrong reverse secret fails the same way on
		// every attempt).
		for _, c := range []struct {
			name      string
			edit      func(*iscsi.Config)
			want      string
			permanent bool
		}{
			{"initiator-secret", func(c *iscsi.Config) { c.CHAPSecret = "wrong-secret-333" }, "authentication failed", true},
			{"target-secret", func(c *iscsi.Config) { c.RevCHAPSecret = "wrong-secret-444" }, "mutual CHAP: target failed to authenticate", true},
			{"initiator-name", func(c *iscsi.Config) { c.InitiatorName += "-other" }, "authorization failed", true},
		} {
			cfg := config(t, tg)
			cfg.Retry = iscsi.RetryPolicy{MaxAttempts: 3}
			c.edit(&cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			t0 := time.Now()
			s, err := iscsi.Dial(ctx, cfg)
			cancel()
			took := time.Since(t0)
			if err == nil {
				s.Close()
				t.Errorf("%s: login succeeded", c.name)
				continue
			}
			t.Logf("%s: refused after %v: %v", c.name, took.Round(time.Millisecond), err)
			msg := err.Error()
			switch {
			case !strings.Contains(msg, c.want):
				t.Errorf("%s: error %q does not say %q", c.name, msg, c.want)
			case strings.Contains(msg, "\n"):
				t.Errorf("%s: error is not one line: %q", c.name, msg)
			case strings.Contains(msg, chap.Secret) || strings.Contains(msg, mutual.Secret) || strings.Contains(msg, "wrong-secret"):
				t.Errorf("%s: error shows a secret", c.name)
			case iscsi.IsPermanent(err) != c.permanent:
				t.Errorf("%s: IsPermanent %v, want %v", c.name, iscsi.IsPermanent(err), c.permanent)
			case took > 20*time.Second:
				t.Errorf("%s: took %v to fail", c.name, took)
			}
		}
	})

	s := dial(t, config(t, tg))
	// LIO's TPG defaults (tpgt_1/param) against our offers: InitialR2T is OR'ed,
	// burst lengths and R2Ts take the minimum, Time2Wait the maximum; LIO picks our
	// first CHAP algorithm, SHA3-256. The receive limit LIO declares is logged.
	checkParams(t, s, map[string]string{
		"AuthMethod": "CHAP", "CHAP_A": "8", "InitialR2T": "Yes", "ImmediateData": "Yes",
		"FirstBurstLength": "65536", "MaxBurstLength": "262144", "MaxOutstandingR2T": "1",
		"DefaultTime2Wait": "2", "DefaultTime2Retain": "0", "HeaderDigest": "None", "DataDigest": "None",
	})
	l := s.LUN()
	inq := l.Inquiry()
	t.Logf("INQUIRY: vendor %q product %q revision %q serial %q id %q block %d size %d",
		inq.Vendor, inq.Product, inq.Revision, inq.Serial, inq.ID, l.BlockSize(), l.Size())
	if inq.Vendor != "LIO-ORG" || inq.Serial != tg.Serial() || inq.ID == "" || l.BlockSize() != 512 || l.Size() != size {
		t.Errorf("LUN: vendor %q serial %q id %q block %d size %d; want LIO-ORG, %q, a VPD 0x83 id, 512, %d",
			inq.Vendor, inq.Serial, inq.ID, l.BlockSize(), l.Size(), tg.Serial(), size)
	}

	cases := []struct {
		off int64
		n   int
	}{
		{0, 512}, {4096, 4096}, {1 << 20, 8192}, {2 << 20, 65536}, {3 << 20, 65536 + 512},
		{4 << 20, 256 << 10}, {5 << 20, 1 << 20}, {8 << 20, 4 << 20}, {size - 512, 512},
	}
	for i, c := range cases {
		want := pattern(c.n, uint64(i))
		if _, err := l.WriteAt(want, c.off); err != nil {
			t.Fatalf("write %d at %d: %v", c.n, c.off, err)
		}
		got := make([]byte, c.n)
		if _, err := l.ReadAt(got, c.off); err != nil {
			t.Fatalf("read %d at %d: %v", c.n, c.off, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("read back %d bytes at %d: differs", c.n, c.off)
		}
	}
	if err := l.Flush(); err != nil {
		t.Fatalf("SYNCHRONIZE CACHE: %v", err)
	}
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i, c := range cases {
		got := make([]byte, c.n)
		if _, err := f.ReadAt(got, c.off); err != nil || !bytes.Equal(got, pattern(c.n, uint64(i))) {
			t.Errorf("the disk file on the host at %d (%d bytes) lacks what LIO acknowledged (%v)", c.off, c.n, err)
		}
	}
	if _, err := l.ReadAt(make([]byte, 1024), size-512); !errors.Is(err, iscsi.ErrOutOfRange) {
		t.Errorf("read past the end: %v, want ErrOutOfRange", err)
	}

	// 16 writers of 64 KiB at once keep LIO's command window full.
	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 32 {
				off := int64(16<<20 + (w*32+i)*65536)
				if _, err := l.WriteAt(pattern(65536, uint64(1000+w*32+i)), off); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("parallel write: %v", err)
	}
	wrote := time.Since(t0)
	t0 = time.Now()
	buf := make([]byte, 32<<20)
	if _, err := l.ReadAt(buf, 16<<20); err != nil {
		t.Fatal(err)
	}
	read := time.Since(t0)
	for i := range 512 {
		if !bytes.Equal(buf[i*65536:(i+1)*65536], pattern(65536, uint64(1000+i))) {
			t.Fatalf("parallel write %d read back differently", i)
		}
	}
	st := s.Stats()
	t.Logf("32 MiB: written by 16 writers in %v (%.1f MiB/s), read back in %v (%.1f MiB/s); %d commands, %d errors, %d reconnects",
		wrote.Round(time.Millisecond), 32/wrote.Seconds(), read.Round(time.Millisecond), 32/read.Seconds(), st.Commands, st.Errors, st.Reconnects)
	if st.Errors != 0 || st.Reconnects != 0 {
		t.Errorf("session counted %d errors, %d reconnects", st.Errors, st.Reconnects)
	}
	if strings.Contains(tg.VM().Console(), chap.Secret) {
		t.Error("a CHAP secret reached the target VM's console")
	}
}
