package nbd

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/iscsi"
)

// TestSplicedReadsThroughISCSI serves a tgtd LUN full of random bytes and reads it
// back the three ways a client can: nbdcopy with structured replies over a Unix
// socket and over TCP, and the kernel's way (no handshake, simple replies, a
// socketpair, never spliced) with 200 reads of 64 KiB to 2 MiB in flight. Large reads go through
// pipes (SplicedBytes counts them), small ones through memory, and every byte read
// is the byte written.
func TestSplicedReadsThroughISCSI(t *testing.T) {
	testenv.Require(t, "integration test", "tgtd", "nbdcopy")
	const size = 48 << 20
	d, lun, data := randomLUN(t, size, "spliced", 77)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	sock, srv := serveUnix(t, lun, Options{ExportName: d.IQN})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ctx, l)
	for _, uri := range []string{nbdURI(sock), "nbd://" + l.Addr().String()} {
		before := srv.Stats().SplicedBytes
		out := filepath.Join(t.TempDir(), "copy")
		run(t, "nbdcopy", "--request-size=1048576", uri, out)
		if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
			t.Fatalf("nbdcopy %s: the copy differs from what was written", uri)
		}
		if n := srv.Stats().SplicedBytes - before; n < size/2 {
			t.Errorf("nbdcopy %s: only %d of %d bytes spliced", uri, n, size)
		}
	}

	// The kernel's way.
	tc, done := serveKernelStyle(t, ctx, srv)
	type extent struct{ off, n uint64 }
	var extents []extent
	for i := range uint64(200) {
		n := uint64(4096) << (i % 10) // 4 KiB .. 2 MiB
		extents = append(extents, extent{(i * 7919 * 4096) % (size - 2<<20), n})
	}
	before := srv.Stats().SplicedBytes
	go func() {
		for i, e := range extents {
			tc.send(cmdRead, 0, uint64(i), e.off, uint32(e.n), nil)
		}
	}()
	for range extents {
		cookie, errno, b, err := tc.recv(func(c uint64) int { return int(extents[c].n) })
		if err != nil || errno != 0 || cookie >= uint64(len(extents)) {
			t.Fatalf("reply %d: errno %d, %v", cookie, errno, err)
		}
		e := extents[cookie]
		if !bytes.Equal(b, data[e.off:e.off+e.n]) {
			t.Fatalf("read %d (%d bytes at %d) returned other bytes", cookie, e.n, e.off)
		}
	}
	if n := srv.Stats().SplicedBytes - before; n != 0 {
		t.Errorf("%d bytes spliced into the kernel's socket, want copies", n)
	}
	tc.send(cmdDisc, 0, 0, 0, 0, nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("stats: %+v", srv.Stats())
}

// serveKernelStyle serves srv's transmission phase on one end of a socketpair, as the
// kernel's driver is served (no handshake, simple replies), and returns a client on
// the other end and the channel ServeTransmission's result arrives on.
func serveKernelStyle(t *testing.T, ctx context.Context, srv *Server) (*testClient, <-chan error) {
	t.Helper()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range pair {
		f := os.NewFile(uintptr(fd), "socketpair")
		if conns[i], err = net.FileConn(f); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTransmission(ctx, conns[0]) }()
	return &testClient{c: conns[1], r: newReader(conns[1])}, done
}

// randomLUN starts tgtd with a LUN of size bytes, logs in as name and fills the LUN
// with random bytes from seed, which it returns.
func randomLUN(t *testing.T, size int, name string, seed uint64) (*testtarget.Tgtd, *iscsi.LUN, []byte) {
	t.Helper()
	d, sess := tgtdSession(t, testtarget.TgtdOptions{Size: int64(size)}, name, iscsi.Config{Logf: t.Logf})
	lun := sess.LUN()
	data := randBytes(size, seed)
	for off := 0; off < size; off += 4 << 20 {
		if _, err := lun.WriteAt(data[off:off+4<<20], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	return d, lun, data
}

// tgtdSession starts tgtd with opts (the package's ports: 13400-13449, control port
// 43) and logs in to its LUN 1 as iqn.2026-01.org.isboot.test:<name>, with cfg's
// other fields (QueueDepth, Logf) as given. The session closes when the test ends.
func tgtdSession(t testing.TB, opts testtarget.TgtdOptions, name string, cfg iscsi.Config) (*testtarget.Tgtd, *iscsi.Session) {
	t.Helper()
	opts.Port, opts.ControlPort = testtarget.FreePort(t, 13400, 13449), 43
	d := testtarget.StartTgtd(t, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg.Portals, cfg.TargetName, cfg.LUN = []string{d.Addr()}, d.IQN, 1
	cfg.InitiatorName = "iqn.2026-01.org.isboot.test:" + name
	s, err := iscsi.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return d, s
}
