package sockio

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

// TestStream moves 32 MiB through raw writes, gathered writes and raw reads while
// the socket buffers fill and drain, then sees the peer's close as io.EOF.
func TestStream(t *testing.T) {
	c, s := netpair.TCP(t)
	w, r := New(c), New(s)
	if w == nil || r == nil {
		t.Fatal("no raw side for a TCP connection")
	}
	data := make([]byte, 32<<20)
	for i := range data {
		data[i] = byte(i*31 + i>>13)
	}
	errc := make(chan error, 1)
	go func() {
		half := len(data) / 2
		if n, err := w.Write(data[:half]); err != nil || n != half {
			errc <- errors.Join(err, io.ErrShortWrite)
			return
		}
		var bufs [][]byte
		for off := half; off < len(data); off += 1 << 20 {
			bufs = append(bufs, data[off:off+16], nil, data[off+16:off+1<<20])
		}
		n, err := w.Writev(bufs)
		if err == nil && n != int64(len(data)-half) {
			err = io.ErrShortWrite
		}
		if err == nil {
			err = c.Close()
		}
		errc <- err
	}()
	got, err := io.ReadAll(readerFunc(r.Read))
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, not the %d written", len(got), len(data))
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(b []byte) (int, error) { return f(b) }

// TestDeadline: a raw read waits in the runtime's poller, so the connection's read
// deadline ends it.
func TestDeadline(t *testing.T) {
	_, s := netpair.TCP(t)
	s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := New(s).Read(make([]byte, 10))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
}

func TestNotASocket(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if New(a) != nil {
		t.Fatal("net.Pipe has no socket, yet New returned one")
	}
}

// Read, Write and Writev allocate nothing: they run for every PDU and reply.
func TestNoAllocs(t *testing.T) {
	c, s := netpair.TCP(t)
	w, r := New(c), New(s)
	out, in := make([]byte, 4096), make([]byte, 4096)
	vec := make([][]byte, 2)
	round := func() {
		if _, err := w.Write(out[:100]); err != nil {
			t.Fatal(err)
		}
		vec[0], vec[1] = out[:48], out[48:148]
		if _, err := w.Writev(vec); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < 248; {
			n, err := r.Read(in[:248-got])
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	}
	round()
	if a := testing.AllocsPerRun(100, round); a != 0 {
		t.Fatalf("%v allocations per round of Write, Writev and Read", a)
	}
}
