package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
)

// serveUnix serves dev on a fresh unix socket until the test ends and returns its path.
func serveUnix(t testing.TB, dev blockdev.Device, opts Options) (string, *Server) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	srv := NewServer(dev, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	return sock, srv
}

func randBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestHandshakeGoReportsExport(t *testing.T) {
	dev := blockdev.NewMem(1<<20, 512, false)
	sock, _ := serveUnix(t, dev, Options{ExportName: "lun1", MaxRequest: 1 << 20})
	for _, name := range []string{"", "lun1"} {
		tc := dialTest(t, "unix", sock, name)
		if tc.size != 1<<20 {
			t.Errorf("export %q: size %d, want %d", name, tc.size, 1<<20)
		}
		want := uint16(FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagCanMultiConn)
		if tc.flags != want {
			t.Errorf("flags %#x, want %#x", tc.flags, want)
		}
		bs := tc.info[infoBlockSize]
		if len(bs) != 12 {
			t.Fatalf("block size info %x", bs)
		}
		if min, pref, max := binary.BigEndian.Uint32(bs), binary.BigEndian.Uint32(bs[4:]), binary.BigEndian.Uint32(bs[8:]); min != 512 || pref != 4096 || max != 1<<20 {
			t.Errorf("block sizes %d/%d/%d, want 512/4096/%d", min, pref, max, 1<<20)
		}
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := &testClient{c: c, r: newReader(c), info: map[uint16][]byte{}}
	if err := tc.handshakeGo("nosuch"); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%#x", uint32(repErrUnknown))) {
		t.Errorf("GO for an unknown export: %v, want NBD_REP_ERR_UNKNOWN", err)
	}
}

func TestReadWriteAlignedAndUnaligned(t *testing.T) {
	dev := blockdev.NewMem(1<<20, 512, false)
	sock, srv := serveUnix(t, dev, Options{})
	tc := dialTest(t, "unix", sock, "")
	model := make([]byte, 1<<20)
	cases := []struct {
		off uint64
		n   int
		fua uint16
	}{{0, 4096, 0}, {4096, 65536, cmdFlagFUA}, {100, 1, 0}, {511, 2, 0}, {1000, 70000, 0}, {1<<20 - 3, 3, cmdFlagFUA}}
	for i, c := range cases {
		p := randBytes(c.n, uint64(i+1))
		if errno, _, err := tc.do(cmdWrite, c.fua, c.off, uint32(c.n), p); err != nil || errno != 0 {
			t.Fatalf("write %d+%d: errno %d, %v", c.off, c.n, errno, err)
		}
		copy(model[c.off:], p)
	}
	for _, c := range append(cases, struct {
		off uint64
		n   int
		fua uint16
	}{0, 1 << 20, 0}) {
		errno, got, err := tc.do(cmdRead, 0, c.off, uint32(c.n), nil)
		if err != nil || errno != 0 {
			t.Fatalf("read %d+%d: errno %d, %v", c.off, c.n, errno, err)
		}
		if !bytes.Equal(got, model[c.off:c.off+uint64(c.n)]) {
			t.Errorf("read %d+%d: data differs from what was written", c.off, c.n)
		}
	}
	whole := make([]byte, 1<<20)
	dev.ReadAt(whole, 0)
	if !bytes.Equal(whole, model) {
		t.Error("device contents differ from what was written")
	}
	// Zeroes (aligned, unaligned, inside one block, with NO_HOLE) and trim.
	for _, z := range []struct{ off, n uint64 }{{8192, 8192}, {700, 3000}, {1030, 10}, {1 << 19, 1 << 19}} {
		if errno, _, err := tc.do(cmdWriteZeroes, cmdFlagNoHole, z.off, uint32(z.n), nil); err != nil || errno != 0 {
			t.Fatalf("write zeroes %d+%d: errno %d, %v", z.off, z.n, errno, err)
		}
		clear(model[z.off : z.off+z.n])
	}
	dev.ReadAt(whole, 0)
	if !bytes.Equal(whole, model) {
		t.Error("device contents wrong after WRITE_ZEROES")
	}
	for _, typ := range []uint16{cmdFlush, cmdTrim} {
		if errno, _, err := tc.do(typ, 0, 0, 4096, nil); err != nil || errno != 0 {
			t.Errorf("command %d: errno %d, %v", typ, errno, err)
		}
	}
	if st := srv.Stats(); st.WriteBytes == 0 || st.ReadBytes < 1<<20 || st.Commands < 12 {
		t.Errorf("stats %+v do not count the I/O", st)
	}
}

func TestErrorsMapped(t *testing.T) {
	rw := blockdev.NewMem(1<<20, 512, false)
	sock, _ := serveUnix(t, rw, Options{MaxRequest: 1 << 16})
	tc := dialTest(t, "unix", sock, "")
	for _, c := range []struct {
		name  string
		typ   uint16
		flags uint16
		off   uint64
		n     uint32
		want  uint32
	}{
		{"read past end", cmdRead, 0, 1<<20 - 512, 1024, errInval},
		{"read at end+1", cmdRead, 0, 1<<20 + 1, 0, errInval},
		{"offset overflow", cmdRead, 0, ^uint64(0) - 10, 512, errInval},
		{"read above max request", cmdRead, 0, 0, 1 << 17, errInval},
		{"trim past end", cmdTrim, 0, 1 << 20, 512, errInval},
		{"zeroes past end", cmdWriteZeroes, 0, 1<<20 - 512, 4096, errInval},
		{"unknown command", 99, 0, 0, 512, errInval},
		{"unknown flag", cmdRead, 1 << 9, 0, 512, errInval},
	} {
		errno, _, err := tc.do(c.typ, c.flags, c.off, c.n, nil)
		if err != nil || errno != c.want {
			t.Errorf("%s: errno %d (%v), want %d", c.name, errno, err, c.want)
		}
	}
	if errno, _, err := tc.do(cmdWrite, 0, 1<<20-512, 1024, make([]byte, 1024)); err != nil || errno != errInval {
		t.Errorf("write past end: errno %d (%v), want EINVAL", errno, err)
	}
	// The connection survives all of that.
	if errno, _, err := tc.do(cmdRead, 0, 0, 512, nil); err != nil || errno != 0 {
		t.Errorf("read after errors: errno %d, %v", errno, err)
	}

	ro := blockdev.NewMem(1<<20, 512, true)
	rosock, _ := serveUnix(t, ro, Options{})
	rc := dialTest(t, "unix", rosock, "")
	if rc.flags&FlagReadOnly == 0 {
		t.Errorf("read-only export flags %#x lack READ_ONLY", rc.flags)
	}
	if errno, _, err := rc.do(cmdWrite, 0, 0, 512, make([]byte, 512)); err != nil || errno != errPerm {
		t.Errorf("write to read-only: errno %d (%v), want EPERM", errno, err)
	}
	for _, typ := range []uint16{cmdTrim, cmdWriteZeroes} {
		if errno, _, err := rc.do(typ, 0, 0, 512, nil); err != nil || errno != errPerm {
			t.Errorf("command %d on read-only: errno %d (%v), want EPERM", typ, errno, err)
		}
	}
}

// failingDev fails every I/O, like a LUN whose SCSI commands come back CHECK CONDITION.
type failingDev struct{ *blockdev.Mem }

var errMedium = errors.New("sense 03/11/00: unrecovered read error")

func (failingDev) ReadAt([]byte, int64) (int, error) { return 0, errMedium }
func (failingDev) Flush() error                      { return errMedium }

func TestBackendFailureIsEIOAndLogged(t *testing.T) {
	var mu sync.Mutex
	var logs []string
	logf := func(f string, a ...any) { mu.Lock(); logs = append(logs, fmt.Sprintf(f, a...)); mu.Unlock() }
	sock, srv := serveUnix(t, failingDev{blockdev.NewMem(1<<20, 512, false)}, Options{Logf: logf})
	tc := dialTest(t, "unix", sock, "")
	for _, typ := range []uint16{cmdRead, cmdFlush} {
		if errno, _, err := tc.do(typ, 0, 4096, 512, nil); err != nil || errno != errIO {
			t.Errorf("command %d: errno %d (%v), want EIO", typ, errno, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(logs) != 2 || !strings.Contains(logs[0], "sense 03/11/00") || !strings.Contains(logs[0], "read at 4096+512") {
		t.Errorf("logged %q, want both failures with the backend error", logs)
	}
	if srv.Stats().Errors != 2 {
		t.Errorf("errors counted %d, want 2", srv.Stats().Errors)
	}
}

// gateDev blocks reads at offset 0 until gate is closed and records the most requests
// it has seen at once.
type gateDev struct {
	*blockdev.Mem
	gate              chan struct{}
	inside, maxInside atomic.Int32
}

func (g *gateDev) ReadAt(p []byte, off int64) (int, error) {
	n := g.inside.Add(1)
	defer g.inside.Add(-1)
	for {
		m := g.maxInside.Load()
		if n <= m || g.maxInside.CompareAndSwap(m, n) {
			break
		}
	}
	if off == 0 {
		<-g.gate
	}
	return g.Mem.ReadAt(p, off)
}

func TestRepliesOutOfOrder(t *testing.T) {
	dev := &gateDev{Mem: blockdev.NewMem(1<<20, 512, false), gate: make(chan struct{})}
	dev.Mem.WriteAt(randBytes(8192, 9), 0)
	sock, _ := serveUnix(t, dev, Options{})
	tc := dialTest(t, "unix", sock, "")
	if err := tc.send(cmdRead, 0, 1, 0, 4096, nil); err != nil {
		t.Fatal(err)
	}
	if err := tc.send(cmdRead, 0, 2, 4096, 4096, nil); err != nil {
		t.Fatal(err)
	}
	four := func(uint64) int { return 4096 }
	cookie, errno, _, err := tc.recv(four)
	if err != nil || errno != 0 || cookie != 2 {
		t.Fatalf("first reply: cookie %d errno %d %v, want cookie 2 (the blocked read 1 must not hold it up)", cookie, errno, err)
	}
	close(dev.gate)
	cookie, errno, data, err := tc.recv(four)
	if err != nil || errno != 0 || cookie != 1 {
		t.Fatalf("second reply: cookie %d errno %d %v", cookie, errno, err)
	}
	if !bytes.Equal(data, randBytes(8192, 9)[:4096]) {
		t.Error("read 1 returned wrong data")
	}
}

func TestQueueDepthBoundsRequestsInFlight(t *testing.T) {
	dev := &gateDev{Mem: blockdev.NewMem(1<<20, 512, false), gate: make(chan struct{})}
	sock, _ := serveUnix(t, dev, Options{QueueDepth: 4})
	tc := dialTest(t, "unix", sock, "")
	for i := range 16 {
		if err := tc.send(cmdRead, 0, uint64(i), 0, 512, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until the queue is full (a fixed 200 ms was too short on a loaded
	// machine), then give a request beyond the depth time to slip through.
	deadline := time.Now().Add(10 * time.Second)
	for dev.inside.Load() < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if n := dev.inside.Load(); n != 4 {
		t.Errorf("%d requests reached the device, want exactly the queue depth 4", n)
	}
	close(dev.gate)
	seen := map[uint64]bool{}
	for range 16 {
		cookie, errno, _, err := tc.recv(func(uint64) int { return 512 })
		if err != nil || errno != 0 {
			t.Fatalf("reply: errno %d, %v", errno, err)
		}
		seen[cookie] = true
	}
	if len(seen) != 16 || dev.maxInside.Load() > 4 {
		t.Errorf("replies for %d cookies, max in flight %d", len(seen), dev.maxInside.Load())
	}
}

// Options.Depth hears the requests in flight as each one comes in, itself counted:
// three held at the device are 1, 2, 3; once they are answered, the next is 1 again.
func TestDepthCountsRequestsInFlight(t *testing.T) {
	dev := &gateDev{Mem: blockdev.NewMem(1<<20, 512, false), gate: make(chan struct{})}
	var mu sync.Mutex
	var depths []int
	sock, srv := serveUnix(t, dev, Options{Depth: func(n int) {
		mu.Lock()
		depths = append(depths, n)
		mu.Unlock()
	}})
	tc := dialTest(t, "unix", sock, "")
	for i := range 3 {
		if err := tc.send(cmdRead, 0, uint64(i), 0, 512, nil); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for dev.inside.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	close(dev.gate)
	for range 3 {
		if _, errno, _, err := tc.recv(func(uint64) int { return 512 }); err != nil || errno != 0 {
			t.Fatalf("reply: errno %d, %v", errno, err)
		}
	}
	// A slot goes back just after its reply is written: wait for the last one.
	for srv.inFlight.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := tc.send(cmdRead, 0, 9, 512, 512, nil); err != nil {
		t.Fatal(err)
	}
	if _, errno, _, err := tc.recv(func(uint64) int { return 512 }); err != nil || errno != 0 {
		t.Fatalf("reply: errno %d, %v", errno, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []int{1, 2, 3, 1}; !slices.Equal(depths, want) {
		t.Errorf("depths heard %v, want %v", depths, want)
	}
}

func TestServeTransmissionSkipsHandshake(t *testing.T) {
	dev := blockdev.NewMem(1<<20, 4096, false)
	srvEnd, cliEnd := net.Pipe()
	srv := NewServer(dev, Options{Logf: t.Logf})
	done := make(chan error, 1)
	go func() { done <- srv.ServeTransmission(context.Background(), srvEnd) }()
	tc := &testClient{c: cliEnd, r: newReader(cliEnd)}
	p := randBytes(8192, 3)
	if errno, _, err := tc.do(cmdWrite, cmdFlagFUA, 4096, 8192, p); err != nil || errno != 0 {
		t.Fatalf("write: errno %d, %v", errno, err)
	}
	if errno, got, err := tc.do(cmdRead, 0, 4096, 8192, nil); err != nil || errno != 0 || !bytes.Equal(got, p) {
		t.Fatalf("read back: errno %d, %v, equal %v", errno, err, bytes.Equal(got, p))
	}
	if err := tc.send(cmdDisc, 0, 0, 0, 0, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeTransmission after DISC: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeTransmission did not return after NBD_CMD_DISC")
	}
}

func TestOversizedWriteClosesConnection(t *testing.T) {
	sock, _ := serveUnix(t, blockdev.NewMem(1<<20, 512, false), Options{MaxRequest: 4096})
	tc := dialTest(t, "unix", sock, "")
	tc.send(cmdWrite, 0, 1, 0, 8192, make([]byte, 8192))
	tc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, _, err := tc.recv(nil); err == nil {
		t.Error("server replied to a write above the maximum instead of closing")
	}
}

// Large writes sent back to back with small ones, in one stream, are each read whole:
// after a large payload the next request header is read on its own (source.limit),
// which must not lose or shift a byte wherever the stream's reads happen to split.
func TestLargeWritesPipelined(t *testing.T) {
	const size = 8 << 20
	sock, _ := serveUnix(t, blockdev.NewMem(size, 512, false), Options{})
	tc := dialTest(t, "unix", sock, "")
	type ext struct {
		off uint64
		p   []byte
	}
	var exts []ext
	var burst []byte
	off := uint64(0)
	for i := range 24 {
		n := []int{32 << 10, 4096, 256 << 10, 512, 96 << 10, 1 << 20}[i%6]
		p := randBytes(n, uint64(i+1))
		exts = append(exts, ext{off, p})
		burst = append(burst, encodeRequest(cmdWrite, 0, uint64(i), off, uint32(n), p)...)
		off += uint64(n)
	}
	go tc.c.Write(burst) // the replies must be read while it goes
	for range exts {
		if _, errno, _, err := tc.recv(nil); err != nil || errno != 0 {
			t.Fatalf("write reply: errno %d, %v", errno, err)
		}
	}
	for i, e := range exts {
		errno, got, err := tc.do(cmdRead, 0, e.off, uint32(len(e.p)), nil)
		if err != nil || errno != 0 || !bytes.Equal(got, e.p) {
			t.Fatalf("extent %d (%d bytes at %d): errno %d, %v, equal %v", i, len(e.p), e.off, errno, err, bytes.Equal(got, e.p))
		}
	}
}
