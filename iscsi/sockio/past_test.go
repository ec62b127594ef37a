package sockio

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// TestReadFullPastLeavesTheRestUnread reads a segment whose start is buffered already
// and whose tail is shorter than the buffer: every byte after the segment must stay
// in the stream, neither read nor copied, and the segment must arrive whole.
func TestReadFullPastLeavesTheRestUnread(t *testing.T) {
	stream := make([]byte, 300<<10)
	for i := range stream {
		stream[i] = byte(i*7 + i>>9)
	}
	const hdr, seg = 48, 200 << 10 // a header, then a segment; the rest follows it
	under := &countingReader{r: iotest.HalfReader(bytes.NewReader(stream))}
	br := bufio.NewReaderSize(under, 64<<10)
	h := make([]byte, hdr)
	if _, err := io.ReadFull(br, h); err != nil {
		t.Fatal(err)
	}
	if br.Buffered() == 0 {
		t.Fatal("the header's read buffered nothing of the segment: the test needs some")
	}
	dst := make([]byte, seg)
	if err := ReadFullPast(br, under, dst); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst, stream[hdr:hdr+seg]) {
		t.Fatal("the segment read differs from the stream")
	}
	if br.Buffered() != 0 || under.n != hdr+seg {
		t.Fatalf("read %d bytes from the stream, %d buffered, for a segment ending at %d: the tail went through the buffer",
			under.n, br.Buffered(), hdr+seg)
	}
	rest, err := io.ReadAll(br)
	if err != nil || !bytes.Equal(rest, stream[hdr+seg:]) {
		t.Fatalf("the bytes after the segment: %d read, err %v", len(rest), err)
	}
}

// TestReadFullPastShortStream reports a stream that ends inside the segment as
// io.ErrUnexpectedEOF once some of it came, and io.EOF when none did.
func TestReadFullPastShortStream(t *testing.T) {
	r := bytes.NewReader(make([]byte, 10))
	br := bufio.NewReader(r)
	br.Peek(4)
	if err := ReadFullPast(br, r, make([]byte, 100)); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("stream ending inside the segment: %v, want io.ErrUnexpectedEOF", err)
	}
	r = bytes.NewReader(nil)
	if err := ReadFullPast(bufio.NewReader(r), r, make([]byte, 100)); !errors.Is(err, io.EOF) {
		t.Fatalf("empty stream: %v, want io.EOF", err)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += n
	return n, err
}
