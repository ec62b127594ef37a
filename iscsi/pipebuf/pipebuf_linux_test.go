package pipebuf

import (
	"bytes"
	"io"
	"testing"

	"github.com/isboot/isboot/internal/testkit/netpair"
	"github.com/isboot/isboot/iscsi/sockio"
)

// TestSpliceThrough moves 8 MiB from one TCP connection through a Pipe to another,
// in requests larger than one kernel pipe holds, with bytes written in ahead of each
// splice, and checks them at the far end; Reset drops what a request left.
func TestSpliceThrough(t *testing.T) {
	srcW, srcR := netpair.TCP(t)
	dstW, dstR := netpair.TCP(t)
	in, out := sockio.New(srcR), sockio.New(dstW)
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>11)
	}
	go srcW.Write(data)
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, len(data))
		n := 0
		for n < len(b) {
			m, err := dstR.Read(b[n:])
			if err != nil {
				break
			}
			n += m
		}
		got <- b[:n]
	}()
	var p Pipe
	defer p.Close()
	for off := 0; off < len(data); {
		n := min(3<<20+4096, len(data)-off) // more than a 1 MiB pipe holds
		// The first bytes were already read into memory, as a PDU reader's buffer holds
		// them, and go in by copy.
		head := make([]byte, min(100, n))
		k, err := io.ReadFull(readerFunc(in.Read), head)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Write(head); err != nil {
			t.Fatal(err)
		}
		if err := p.SpliceFrom(in, n-k); err != nil {
			t.Fatal(err)
		}
		if p.Len() != n {
			t.Fatalf("pipe holds %d bytes, want %d", p.Len(), n)
		}
		if err := p.SpliceTo(out.RawConn()); err != nil {
			t.Fatal(err)
		}
		if p.Len() != 0 {
			t.Fatalf("pipe holds %d bytes after SpliceTo", p.Len())
		}
		off += n
	}
	if b := <-got; !bytes.Equal(b, data) {
		i := 0
		for i < len(b) && b[i] == data[i] {
			i++
		}
		t.Fatalf("%d bytes arrived, not the %d sent: first difference at %d", len(b), len(data), i)
	}
	p.Write([]byte("left over"))
	p.Reset()
	if p.Len() != 0 {
		t.Fatal("Reset left bytes")
	}
	p.Write([]byte("fresh"))
	b := make([]byte, 16)
	if n, err := p.Read(b); err != nil || string(b[:n]) != "fresh" {
		t.Fatalf("after Reset, Read gave %q, %v", b[:n], err)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(b []byte) (int, error) { return f(b) }

// TestSpliceNToInPieces fills one Pipe across several kernel pipes and splices it out
// in uneven pieces, as a merged read answers its requests one after another: the far
// end must get every byte in order, and a piece larger than what is held must fail
// and leave the pipe empty.
func TestSpliceNToInPieces(t *testing.T) {
	srcW, srcR := netpair.TCP(t)
	dstW, dstR := netpair.TCP(t)
	in, out := sockio.New(srcR), sockio.New(dstW)
	data := make([]byte, 3<<20+12345)
	for i := range data {
		data[i] = byte(i*13 + i>>9)
	}
	go srcW.Write(data)
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, len(data))
		n, _ := io.ReadFull(dstR, b)
		got <- b[:n]
	}()
	var p Pipe
	defer p.Close()
	if err := p.SpliceFrom(in, len(data)); err != nil {
		t.Fatal(err)
	}
	pieces := []int{100 << 10, 1<<20 + 7, 1, 1<<20 - 8}
	left := len(data)
	for _, n := range pieces {
		if err := p.SpliceNTo(out.RawConn(), n); err != nil {
			t.Fatal(err)
		}
		left -= n
		if p.Len() != left {
			t.Fatalf("after a piece of %d the pipe holds %d, want %d", n, p.Len(), left)
		}
	}
	if err := p.SpliceNTo(out.RawConn(), left); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, data) {
		i := 0
		for i < len(b) && b[i] == data[i] {
			i++
		}
		t.Fatalf("%d bytes arrived, not the %d sent: first difference at %d", len(b), len(data), i)
	}
	p.Write([]byte("short"))
	if err := p.SpliceNTo(out.RawConn(), 6); err == nil {
		t.Fatal("a splice of 6 bytes from a pipe holding 5 succeeded")
	}
	if p.Len() != 0 {
		t.Fatalf("a failed SpliceNTo left %d bytes", p.Len())
	}
}
