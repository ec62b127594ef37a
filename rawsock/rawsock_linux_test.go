package rawsock

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// A Writev larger than the socket buffers goes out whole, across EAGAIN waits, and
// arrives in order; the reader sees EOF after the writer closes.
func TestWritevWholeAndReadEOF(t *testing.T) {
	a, b := tcpPair(t)
	a.SetWriteBuffer(4096) // a small send buffer, so Writev waits for room
	wa, rb := New(a), New(b)
	if wa == nil || rb == nil {
		t.Fatal("New returned nil for a TCP connection")
	}
	head, body, tail := []byte("head"), bytes.Repeat([]byte{0xa5}, 1<<20), []byte("tail")
	want := append(append(append([]byte{}, head...), body...), tail...)
	errc := make(chan error, 1)
	go func() {
		n, err := wa.Writev([][]byte{head, nil, body, tail})
		if err == nil && n != len(want) {
			err = errors.New("short Writev")
		}
		a.CloseWrite()
		errc <- err
	}()
	got, err := io.ReadAll(rb)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("Writev: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d (or different content)", len(got), len(want))
	}
}

// A read deadline and a Close from another goroutine end a waiting Read as they
// would on the net.Conn.
func TestReadDeadlineAndClose(t *testing.T) {
	a, _ := tcpPair(t)
	r := New(a)
	a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v, want ErrDeadlineExceeded", err)
	}
	a.SetReadDeadline(time.Time{})
	time.AfterFunc(50*time.Millisecond, func() { a.Close() })
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read on a closed connection: %v, want net.ErrClosed", err)
	}
	if _, err := r.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write on a closed connection: %v, want net.ErrClosed", err)
	}
}

// Writing to a peer that has gone reports the system's error, not success.
func TestWriteToResetPeer(t *testing.T) {
	a, b := tcpPair(t)
	b.SetLinger(0)
	b.Close() // RST
	w := New(a)
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = w.Write(make([]byte, 64<<10))
		time.Sleep(time.Millisecond)
	}
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "write" {
		t.Fatalf("Write to a reset peer: %v, want a write OpError", err)
	}
}

// A Read or Write does not allocate: the daemon calls them for every I/O.
func TestNoAllocs(t *testing.T) {
	a, b := tcpPair(t)
	wa, rb := New(a), New(b)
	msg, buf := []byte("0123456789"), make([]byte, 10)
	allocs := testing.AllocsPerRun(100, func() {
		wa.Write(msg)
		io.ReadFull(rb, buf)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per write and read", allocs)
	}
}

func TestNotASocket(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if New(a) != nil {
		t.Fatal("New wrapped a net.Pipe")
	}
	if Reader(a) != io.Reader(a) {
		t.Fatal("Reader of a net.Pipe is not the pipe")
	}
}

// With Coalesce, a Read that finds the socket empty wakes when the bytes asked for
// are there, not at the first segment; when they do not come, it returns what did
// after maxWait, and the next wait takes any data at all.
func TestCoalesce(t *testing.T) {
	a, b := tcpPair(t)
	a.SetNoDelay(true)
	r := New(b)
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
