package iscsi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/testtarget"
)

// Ports for this package's tests (iscsi helper range): TCP 13260-13284, tgtd
// control ports 10-18.

func startTgtd(t testing.TB, opts testtarget.TgtdOptions) *testtarget.Tgtd {
	t.Helper()
	if opts.Port == 0 {
		opts.Port = testtarget.FreePort(t, 13260, 13279)
	}
	if opts.ControlPort == 0 {
		opts.ControlPort = testtarget.FreeControlPort(t, 10, 18)
	}
	return testtarget.StartTgtd(t, opts)
}

func testConfig(tg testtarget.Target) Config {
	return Config{
		Portals:       []string{tg.Addr()},
		TargetName:    tg.TargetIQN(),
		LUN:           tg.LUNNumber(),
		InitiatorName: "iqn.2026-01.org.isboot.test:initiator",
		Retry:         RetryPolicy{MaxElapsed: 30 * time.Second},
	}
}

func dial(t testing.TB, cfg Config) *Session {
	t.Helper()
	if cfg.Logf == nil {
		cfg.Logf = func(f string, a ...any) { t.Logf(time.Now().Format("15:04:05.000 ")+f, a...) }
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// pattern fills a buffer with data derived from (seed, offset) so every block is
// distinguishable from every other block and from an older write.
func pattern(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// exerciseLUN writes, reads back, flushes, zeroes and unmaps through the LUN and
// checks the backing file too, so the bytes really reached the target's disk.
func exerciseLUN(t *testing.T, s *Session, backing string) {
	t.Helper()
	l := s.LUN()
	if l.BlockSize() != 512 || l.Size() < 16<<20 {
		t.Fatalf("LUN geometry: block %d size %d", l.BlockSize(), l.Size())
	}
	cases := []struct {
		off int64
		n   int
	}{{0, 512}, {4096, 4096}, {1 << 20, 256 << 10}, {3<<20 + 512, 3<<20 + 1024}, {l.Size() - 8192, 8192}}
	for i, c := range cases {
		want := pattern(c.n, uint64(i+1))
		if n, err := l.WriteAt(want, c.off); err != nil || n != c.n {
			t.Fatalf("WriteAt(%d, %d): %d, %v", c.off, c.n, n, err)
		}
		got := make([]byte, c.n)
		if n, err := l.ReadAt(got, c.off); err != nil || n != c.n {
			t.Fatalf("ReadAt(%d, %d): %d, %v", c.off, c.n, n, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("read back at %d (%d bytes) differs", c.off, c.n)
		}
	}
	if _, err := l.WriteAtFUA(pattern(4096, 99), 8192); err != nil {
		t.Fatalf("WriteAtFUA: %v", err)
	}
	if err := l.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if backing != "" {
		f, err := os.Open(backing)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		got := make([]byte, 3<<20+1024)
		f.ReadAt(got, 3<<20+512)
		if !bytes.Equal(got, pattern(3<<20+1024, 4)) {
			t.Fatalf("backing file does not hold what was written")
		}
	}
	if err := l.WriteZeroes(1<<20, 64<<10); err != nil {
		t.Fatalf("WriteZeroes: %v", err)
	}
	got := make([]byte, 256<<10)
	l.ReadAt(got, 1<<20)
	if !bytes.Equal(got[:64<<10], make([]byte, 64<<10)) || !bytes.Equal(got[64<<10:], pattern(256<<10, 3)[64<<10:]) {
		t.Fatalf("WriteZeroes zeroed the wrong range")
	}
	if err := l.Unmap(2<<20, 1<<20); err != nil {
		t.Fatalf("Unmap: %v", err)
	}
	if _, err := l.ReadAt(make([]byte, 100), 0); err == nil {
		t.Fatalf("unaligned read succeeded")
	}
	if _, err := l.ReadAt(make([]byte, 1024), l.Size()-512); err == nil {
		t.Fatalf("read past the end succeeded")
	}
	st := s.Stats()
	if st.Commands < 10 || st.ReadBytes == 0 || st.WriteBytes == 0 {
		t.Fatalf("stats not counted: %+v", st)
	}
}

func sum(b []byte) [32]byte { return sha256.Sum256(b) }

func TestTgtdReadWrite(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{})
	s := dial(t, testConfig(d))
	exerciseLUN(t, s, d.Backing())
	// tgtd lists WRITE SAME(16), so exerciseLUN's WriteZeroes went through it (and
	// read back as zeroes), with no fallback to writing them.
	if !s.LUN().ZeroesCheaply() {
		t.Error("tgtd lists WRITE SAME(16) but the LUN does not use it")
	}
	t.Logf("%s exercised", time.Now().Format("15:04:05.000"))
	params := map[string]string{}
	for _, kv := range s.Params() {
		params[kv.Key] = kv.Value
	}
	if params["state"] != "serving" || params["tsih"] == "0" || params["ImmediateData"] != "Yes" || len(params["isid"]) != 12 {
		t.Fatalf("params: %v", params)
	}
	if luns, err := s.ReportLUNs(); err != nil || !slices.Contains(luns, 1) {
		t.Fatalf("REPORT LUNS: %v, %v", luns, err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close (logout): %v", err)
	}
	if _, err := s.LUN().ReadAt(make([]byte, 512), 0); err != ErrClosed {
		t.Fatalf("read after Close: %v, want ErrClosed", err)
	}
}

func TestGotgtReadWrite(t *testing.T) {
	g := testtarget.StartGotgt(t, testtarget.GotgtOptions{Port: testtarget.FreePort(t, 13280, 13284)})
	s := dial(t, testConfig(g))
	// gotgt refuses REPORT SUPPORTED OPERATION CODES: an answer to a probe, not an
	// I/O error for the status file to count.
	if st := s.Stats(); st.Errors != 0 {
		t.Errorf("opening the LUN counted %d errors", st.Errors)
	}
	exerciseLUN(t, s, g.Backing())
	// gotgt answers WRITE SAME with GOOD and zeroes the wrong blocks; it does not list
	// the command, so the LUN must not use it.
	if s.LUN().ZeroesCheaply() {
		t.Error("the LUN uses WRITE SAME on gotgt, which does not list it")
	}
	want := Inquiry{Vendor: "GOSTOR", Product: "GOTGT", Serial: "gotgt-1000", ID: "naa.30000000000003e8", BlockSize: 512}
	if got := s.LUN().Inquiry(); got != want {
		t.Errorf("Inquiry:\n got %+v\nwant %+v", got, want)
	}
}

// LUN 300 needs flat space addressing (41 2c ...): tgtd decodes it, and a LUN sent in
// peripheral addressing (01 2c: bus 1, LUN 44, as libiscsi sends it) would not reach
// it. The same LUN given as its 8-byte form works the same.
func TestTgtdFlatSpaceLUN(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{LUN: 300})
	s := dial(t, testConfig(d))
	exerciseLUN(t, s, d.Backing())
	if p := paramMap(s); p["lun"] != "300" {
		t.Errorf("session lun %q", p["lun"])
	}
	if luns, err := s.ReportLUNs(); err != nil || !slices.Contains(luns, 300) {
		t.Errorf("REPORT LUNS: %v, %v", luns, err)
	}
	cfg := testConfig(d)
	cfg.LUN, cfg.LUNAddr = 0, LUNAddr{0x41, 0x2c}
	if _, err := dial(t, cfg).LUN().ReadAt(make([]byte, 512), 0); err != nil {
		t.Errorf("LUN 300 as 412c000000000000: %v", err)
	}
	// Bus 1, LUN 44 is no LUN of tgtd's: the login works, the LUN does not open.
	cfg.LUNAddr = LUNAddr{0x01, 0x2c}
	cfg.Retry = RetryPolicy{MaxAttempts: 1}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if s, err := Dial(ctx, cfg); err == nil {
		s.Close()
		t.Error("LUN 012c000000000000 (bus 1, LUN 44) opened on a target with LUN 300 only")
	} else {
		t.Logf("bus 1, LUN 44: %v", err)
	}
}

// The disk as tgtd describes it: its defaults (vendor IET, serial beaf<tid><lun>, an
// NAA designator), then what the LUN parameters set.
func TestTgtdInquiry(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{})
	want := Inquiry{Vendor: "IET", Product: "VIRTUAL-DISK", Revision: "0001", Serial: "beaf11",
		ID: "naa.60000000000000000e00000000010001", BlockSize: 512}
	if got := dial(t, testConfig(d)).LUN().Inquiry(); got != want {
		t.Errorf("tgtd defaults:\n got %+v\nwant %+v", got, want)
	}
	d2 := startTgtd(t, testtarget.TgtdOptions{LUNParams: "vendor_id=ISBOOT,product_id=ROOT DISK,product_rev=4.2,scsi_sn=SN-0042"})
	got := dial(t, testConfig(d2)).LUN().Inquiry()
	if got.Vendor != "ISBOOT" || got.Product != "ROOT DISK" || got.Revision != "4.2" || got.Serial != "SN-0042" || !strings.HasPrefix(got.ID, "naa.6") {
		t.Errorf("tgtd with LUN parameters: %+v", got)
	}
}
