package nbd

import (
	"encoding/binary"
	"io"
	"testing"

	"github.com/isboot/isboot/internal/blockdev"
)

// benchReads pipelines b.N reads of size bytes, depth at a time, over a unix socket,
// with simple or structured replies (the client side allocates nothing per read).
func benchReads(b *testing.B, size uint32, structured bool) {
	const depth = 16
	dev := blockdev.NewMem(64<<20, 512, false)
	sock, _ := serveUnix(b, dev, Options{})
	var tc *testClient
	if structured {
		tc = dialStructured(b, sock, false)
	} else {
		tc = dialTest(b, "unix", sock, "")
	}
	blocks := uint64(dev.Size()) / uint64(size)
	req := make([]byte, requestSize)
	binary.BigEndian.PutUint32(req, magicRequest)
	binary.BigEndian.PutUint32(req[24:], size)
	send := func(i int) {
		binary.BigEndian.PutUint64(req[16:], uint64(i)%blocks*uint64(size))
		if _, err := tc.c.Write(req); err != nil {
			b.Fatal(err)
		}
	}
	hdr := replySize
	if structured {
		hdr = chunkSize + 8
	}
	reply := make([]byte, hdr+int(size))
	b.SetBytes(int64(size))
	b.ResetTimer()
	sent := 0
	for ; sent < min(depth, b.N); sent++ {
		send(sent)
	}
	for range b.N {
		if _, err := io.ReadFull(tc.r, reply); err != nil {
			b.Fatal(err)
		}
		if sent < b.N {
			send(sent)
			sent++
		}
	}
}

func BenchmarkRead4KiBSimple(b *testing.B)     { benchReads(b, 4096, false) }
func BenchmarkRead4KiBStructured(b *testing.B) { benchReads(b, 4096, true) }
func BenchmarkRead1MiBSimple(b *testing.B)     { benchReads(b, 1<<20, false) }
func BenchmarkRead1MiBStructured(b *testing.B) { benchReads(b, 1<<20, true) }
