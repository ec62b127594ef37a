package sockio

import (
	"bufio"
	"io"
)

// ReadFullPast fills dst with the bytes br holds, then with reads from r, the reader
// under br. A bufio.Reader reads into its own buffer for any read shorter than the
// buffer, so io.ReadFull(br, dst) takes the last 64 KiB of a large segment through the
// buffer: it reads the segment's tail there, with whatever follows it on the stream,
// and copies both out again. For a 1 MiB read in 256 KiB Data-In segments that was
// about a tenth of the bytes copied twice, and a Go copy in the TCG guest costs
// 4 ms per MiB.
func ReadFullPast(br *bufio.Reader, r io.Reader, dst []byte) error {
	n := 0
	if b := br.Buffered(); b > 0 {
		n, _ = br.Read(dst[:min(b, len(dst))]) // a copy: the buffer is not empty
	}
	if n == len(dst) {
		return nil
	}
	_, err := io.ReadFull(r, dst[n:])
	if err == io.EOF && n > 0 {
		err = io.ErrUnexpectedEOF
	}
	return err
}
