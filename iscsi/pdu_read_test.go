package iscsi

import (
	"bufio"
	"bytes"
	"io"
	"testing"
	"testing/iotest"
)

// TestLargeSegmentsBypassTheBuffer reads two large Data-In segments as the
// connection's reader does (through a 64 KiB buffer over the socket, the header
// after a large segment read alone): no read from the socket may reach past the
// segment being read, so no segment's bytes are read into the buffer and copied out.
func TestLargeSegmentsBypassTheBuffer(t *testing.T) {
	var wire bytes.Buffer
	w := pduWriter{w: &wire}
	sizes := []int{200 << 10, 100 << 10}
	var ends []int
	for i, n := range sizes {
		var h bhs
		h.reset(opDataIn)
		h[1] = flagFinal
		h.setU32(16, uint32(i))
		if err := w.writePDU(&h, bytes.Repeat([]byte{byte(i + 1)}, n)); err != nil {
			t.Fatal(err)
		}
		if err := w.flush(); err != nil {
			t.Fatal(err)
		}
		ends = append(ends, wire.Len())
	}
	sock := &readCounter{r: iotest.HalfReader(bytes.NewReader(wire.Bytes()))}
	head := &headReader{r: sock}
	br := bufio.NewReaderSize(head, 64<<10)
	r := pduReader{r: br, br: br, head: head, maxData: 1 << 20}
	for i, n := range sizes {
		if err := r.readHeader(); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, r.hdr.dataLen())
		if len(got) != n {
			t.Fatalf("segment %d: %d bytes, want %d", i, len(got), n)
		}
		if err := r.readData(got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, bytes.Repeat([]byte{byte(i + 1)}, n)) {
			t.Fatalf("segment %d differs", i)
		}
		if sock.n != ends[i] || br.Buffered() != 0 {
			t.Fatalf("after segment %d (ending at byte %d) %d bytes were read from the socket and %d are buffered: its tail went through the buffer",
				i, ends[i], sock.n, br.Buffered())
		}
		r.headerNext(0) // as dataIn does after a large segment
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the last segment: %v, want io.EOF", err)
	}
}

type readCounter struct {
	r io.Reader
	n int
}

func (c *readCounter) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += n
	return n, err
}
