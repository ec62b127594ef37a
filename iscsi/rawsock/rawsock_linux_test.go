package rawsock

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/netpair"
)

// raw is c's rawsock reader.
func raw(t *testing.T, c *net.TCPConn) *Conn {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return New(c, rc)
}

// A stream larger than the socket buffers arrives whole and in order through Read,
// across waits for readiness, and the reader sees EOF after the writer closes.
func TestReadWholeAndEOF(t *testing.T) {
	a, b := netpair.TCP(t)
	rb := raw(t, b)
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	errc := make(chan error, 1)
	go func() {
		_, err := a.Write(want)
		a.CloseWrite()
		errc <- err
	}()
	got, err := io.ReadAll(rb)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("Write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d (or different content)", len(got), len(want))
	}
}

// A read deadline and a Close from another goroutine end a waiting Read as they
// would on the net.Conn.
func TestReadDeadlineAndClose(t *testing.T) {
	a, _ := netpair.TCP(t)
	r := raw(t, a)
	a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v, want ErrDeadlineExceeded", err)
	}
	a.SetReadDeadline(time.Time{})
	time.AfterFunc(50*time.Millisecond, func() { a.Close() })
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read on a closed connection: %v, want net.ErrClosed", err)
	}
}

// A Read does not allocate: the daemon calls it for every batch of responses.
func TestReadNoAllocs(t *testing.T) {
	a, b := netpair.TCP(t)
	rb := raw(t, b)
	msg, buf := []byte("0123456789"), make([]byte, 10)
	allocs := testing.AllocsPerRun(100, func() {
		a.Write(msg)
		io.ReadFull(rb, buf)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per read", allocs)
	}
}

// With Coalesce, a Read that finds the socket empty wakes when the bytes asked for
// are there, not at the first segment; when they do not come, it returns what did
// after maxWait, and the next wait takes any data at all.
func TestCoalesce(t *testing.T) {
	a, b := netpair.TCP(t)
	a.SetNoDelay(true)
	r := raw(t, b)
	want := 100
	r.Coalesce(func() int { return want }, 2*time.Second)
	go func() {
		// After the Read below has found the socket empty and gone to sleep.
		time.Sleep(50 * time.Millisecond)
		a.Write(make([]byte, 60))
		time.Sleep(100 * time.Millisecond)
		a.Write(make([]byte, 60))
	}()
	buf := make([]byte, 1000)
	n, err := r.Read(buf)
	if err != nil || n != 120 {
		t.Fatalf("coalesced Read = %d, %v; want both segments, 120 bytes", n, err)
	}

	want = 1000
	r.Coalesce(func() int { return want }, 100*time.Millisecond)
	go func() {
		time.Sleep(20 * time.Millisecond)
		a.Write(make([]byte, 10))
	}()
	start := time.Now()
	n, err = r.Read(buf)
	if err != nil || n != 10 {
		t.Fatalf("Read short of the mark = %d, %v; want the 10 bytes there", n, err)
	}
	if d := time.Since(start); d < 90*time.Millisecond {
		t.Fatalf("Read short of the mark returned after %v, before the wait bound", d)
	}
	// After a wait ran out, the next one wakes for any data.
	go func() {
		time.Sleep(50 * time.Millisecond)
		a.Write(make([]byte, 7))
	}()
	if n, err = r.Read(buf); err != nil || n != 7 {
		t.Fatalf("Read after a fall-back = %d, %v; want 7 bytes", n, err)
	}
	// The deadline Coalesce set does not outlive the wait.
	time.Sleep(150 * time.Millisecond)
	a.Write(make([]byte, 200))
	if n, err = r.Read(buf); err != nil || n != 200 {
		t.Fatalf("Read after the bound passed = %d, %v; want 200 bytes", n, err)
	}

	// Turned off, the mark is gone: a Read wakes for a single segment again.
	want = 100
	r.Coalesce(func() int { return want }, time.Second)
	go func() {
		time.Sleep(20 * time.Millisecond)
		a.Write(make([]byte, 150))
	}()
	if n, err = r.Read(buf); err != nil || n != 150 {
		t.Fatalf("Read = %d, %v; want 150 bytes", n, err)
	}
	r.Coalesce(nil, 0)
	go func() {
		time.Sleep(20 * time.Millisecond)
		a.Write(make([]byte, 5))
	}()
	b.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, err = r.Read(buf); err != nil || n != 5 {
		t.Fatalf("Read with coalescing off = %d, %v; want 5 bytes at once", n, err)
	}
}
