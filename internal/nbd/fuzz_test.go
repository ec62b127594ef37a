package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
)

// The TCP client is untrusted. These fuzz targets feed arbitrary client bytes to the
// handshake and to the request decoder: the server must never panic or hang, must
// size nothing by a length the client chose beyond its fixed limits (option data
// maxOptionData, payloads MaxRequest, both small here), and what it writes back must
// be well formed. `go test` runs the seeds; `go test -fuzz FuzzHandshake` explores.

// fuzzConn is a net.Conn whose peer sent in and receives nothing; it keeps the first
// fuzzMaxOut bytes the server writes.
type fuzzConn struct {
	in  *bytes.Reader
	mu  sync.Mutex
	out bytes.Buffer
	cut bool // output beyond fuzzMaxOut was dropped
}

const fuzzMaxOut = 8 << 20

func (c *fuzzConn) Read(p []byte) (int, error) { return c.in.Read(p) }
func (c *fuzzConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.out.Len()+len(p) > fuzzMaxOut {
		c.cut = true
	} else {
		c.out.Write(p)
	}
	return len(p), nil
}
func (c *fuzzConn) Close() error                     { return nil }
func (c *fuzzConn) LocalAddr() net.Addr              { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (c *fuzzConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

const fuzzDevSize = 64 << 10

func fuzzServer() *Server {
	dev := blockdev.NewMem(fuzzDevSize, 512, false)
	dev.WriteAt(bytes.Repeat([]byte{0xa5}, 4096), 8192) // data among holes
	return NewServer(dev, Options{ExportName: "disk", Description: "fuzz", MaxRequest: 8192,
		MaxBufferBytes: 32 << 10, QueueDepth: 4, Logf: func(string, ...any) {}})
}

// fuzzOption encodes an option for the seeds (encodeRequest a request).
func fuzzOption(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// fuzzRequests is a valid request stream touching every command and flag.
func fuzzRequests() []byte {
	return cat(
		encodeRequest(cmdRead, 0, 1, 0, 4096, nil),
		encodeRequest(cmdRead, cmdFlagDF, 2, 1000, 3000, nil),
		encodeRequest(cmdWrite, cmdFlagFUA, 3, 512, 1024, bytes.Repeat([]byte{7}, 1024)),
		encodeRequest(cmdBlockStatus, 0, 4, 0, fuzzDevSize, nil),
		encodeRequest(cmdBlockStatus, cmdFlagReqOne, 5, 8000, 8000, nil),
		encodeRequest(cmdWriteZeroes, cmdFlagNoHole, 6, 700, 3000, nil),
		encodeRequest(cmdTrim, 0, 7, 0, 4096, nil),
		encodeRequest(cmdFlush, 0, 8, 0, 0, nil),
		encodeRequest(cmdRead, 0, 9, fuzzDevSize-512, 1024, nil), // past the end
		encodeRequest(cmdRead, 0, 10, 0, 1<<20, nil),             // above MaxRequest
		encodeRequest(99, 0, 11, 0, 0, nil),
		encodeRequest(cmdDisc, 0, 12, 0, 0, nil),
	)
}

func FuzzHandshake(f *testing.F) {
	cflags := func(fl uint32) []byte { return binary.BigEndian.AppendUint32(nil, fl) }
	full := uint32(flagCFixedNewstyle | flagCNoZeroes)
	info := binary.BigEndian.AppendUint16(append(binary.BigEndian.AppendUint32(nil, 4), "disk"...), 2)
	info = binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(info, infoName), infoBlockSize)
	// What nbdinfo --map does: structured replies, base:allocation, GO, then I/O.
	f.Add(cat(cflags(full), fuzzOption(optStructured, nil),
		fuzzOption(optSetMeta, metaRequest("", metaBaseAllocation)),
		fuzzOption(optGo, goRequest("")), fuzzRequests()))
	// What nbdinfo --list does, and the old EXPORT_NAME ending with its zero padding.
	f.Add(cat(cflags(flagCFixedNewstyle), fuzzOption(optList, nil), fuzzOption(optStructured, nil),
		fuzzOption(optListMeta, metaRequest("disk")), fuzzOption(optListMeta, metaRequest("", "base:", "x:y")),
		fuzzOption(optInfo, info), fuzzOption(optExportName, []byte("disk")), fuzzRequests()))
	// Refusals: meta contexts before structured replies, malformed requests,
	// unknown options, an oversized option, ABORT.
	f.Add(cat(cflags(full), fuzzOption(optSetMeta, metaRequest("", metaBaseAllocation)),
		fuzzOption(optStructured, []byte{1}), fuzzOption(optStructured, nil),
		fuzzOption(optSetMeta, []byte{0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff}),
		fuzzOption(optListMeta, []byte{0xff, 0xff, 0xff, 0xfb, 0, 0, 0, 0}),
		fuzzOption(optInfo, []byte{0, 0}), fuzzOption(77, []byte("x")), fuzzOption(optAbort, nil)))
	f.Add(cat(cflags(full), binary.BigEndian.AppendUint64(nil, magicIHaveOpt), []byte{0, 0, 0, optGo, 0xff, 0xff, 0xff, 0xff}))
	f.Add(cflags(1 << 7))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := fuzzServer()
		c := &fuzzConn{in: bytes.NewReader(data)}
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.ServeConn(context.Background(), c)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("ServeConn did not return on a finite input")
		}
		checkHandshakeOutput(t, c.out.Bytes())
	})
}

// checkHandshakeOutput checks the greeting and the option replies, up to the end of
// the handshake: each reply well formed, and each info and meta context reply the
// size its type demands.
func checkHandshakeOutput(t *testing.T, out []byte) {
	if len(out) < 18 || binary.BigEndian.Uint64(out) != magicNBD || binary.BigEndian.Uint64(out[8:]) != magicIHaveOpt {
		t.Fatalf("greeting % x", out[:min(len(out), 18)])
	}
	for out = out[18:]; len(out) >= 20 && binary.BigEndian.Uint64(out) == magicOptReply; {
		opt, typ, n := binary.BigEndian.Uint32(out[8:]), binary.BigEndian.Uint32(out[12:]), binary.BigEndian.Uint32(out[16:])
		if uint64(n) > uint64(len(out)-20) {
			t.Fatalf("option %d reply %#x: %d bytes announced, %d sent", opt, typ, n, len(out)-20)
		}
		d := out[20 : 20+n]
		out = out[20+n:]
		switch typ {
		case repAck:
			if n != 0 {
				t.Fatalf("ACK with %d bytes", n)
			}
			if opt == optGo {
				return // transmission follows
			}
		case repInfo:
			if n < 2 {
				t.Fatalf("INFO of %d bytes", n)
			}
			want := map[uint16]uint32{infoExport: 12, infoBlockSize: 14}[binary.BigEndian.Uint16(d)]
			if want != 0 && n != want {
				t.Fatalf("INFO %d of %d bytes", binary.BigEndian.Uint16(d), n)
			}
		case repMeta:
			if n < 4 || string(d[4:]) != metaBaseAllocation || (opt != optListMeta && opt != optSetMeta) {
				t.Fatalf("META_CONTEXT %q for option %d", d, opt)
			}
		case repServer:
			if n < 4 || uint64(binary.BigEndian.Uint32(d)) > uint64(n-4) {
				t.Fatalf("SERVER reply %q", d)
			}
		default:
			if typ&(1<<31) == 0 {
				t.Fatalf("option %d: unknown reply type %#x", opt, typ)
			}
		}
	}
}

func FuzzRequestDecoder(f *testing.F) {
	f.Add(fuzzRequests(), true, true)
	f.Add(fuzzRequests(), false, false)
	f.Add(fuzzRequests(), true, false)
	f.Add(cat(encodeRequest(cmdBlockStatus, cmdFlagReqOne|cmdFlagFUA, 1, 1, 1, nil),
		encodeRequest(cmdRead, 0, 2, 0, 0, nil), encodeRequest(cmdWrite, 0, 3, 0, 1<<30, nil)), true, true)
	f.Add(encodeRequest(cmdWrite, 0, 1, 0, 4096, []byte("short payload")), false, false)
	f.Add([]byte{0x25, 0x60, 0x95, 0x13, 0, 0}, true, true)
	f.Fuzz(func(t *testing.T, data []byte, structured, allocation bool) {
		s := fuzzServer()
		c := &fuzzConn{in: bytes.NewReader(data)}
		neg := negotiated{structured: structured, allocation: allocation && structured}
		done := make(chan struct{})
		go func() {
			defer close(done)
			src := &source{Reader: c}
			s.transmit(context.Background(), c, src, bufio.NewReader(src), neg)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("transmission did not end on a finite input")
		}
		if structured && !c.cut {
			checkStructuredStream(t, c.out.Bytes())
		}
	})
}

// checkStructuredStream parses what a server with structured replies wrote. Reads
// never get simple replies then, so the stream is self-describing: simple replies
// without data, or chunks of known types whose lengths agree with their payloads and
// whose offsets lie inside the device.
func checkStructuredStream(t *testing.T, out []byte) {
	for len(out) > 0 {
		if len(out) < replySize {
			t.Fatalf("%d stray bytes at the end", len(out))
		}
		if binary.BigEndian.Uint32(out) == magicSimpleRepl {
			out = out[replySize:]
			continue
		}
		if len(out) < chunkSize || binary.BigEndian.Uint32(out) != magicStructRepl {
			t.Fatalf("not a reply: % x", out[:min(len(out), 20)])
		}
		flags, typ, n := binary.BigEndian.Uint16(out[4:]), binary.BigEndian.Uint16(out[6:]), binary.BigEndian.Uint32(out[16:])
		if uint64(n) > uint64(len(out)-chunkSize) {
			t.Fatalf("chunk type %#x: %d bytes announced, %d sent", typ, n, len(out)-chunkSize)
		}
		p := out[chunkSize : chunkSize+n]
		out = out[chunkSize+n:]
		switch typ {
		case replyNone:
			if n != 0 || flags&replyFlagDone == 0 {
				t.Fatalf("NONE chunk: %d bytes, flags %d", n, flags)
			}
		case replyOffsetData:
			if n < 9 || binary.BigEndian.Uint64(p) > fuzzDevSize || uint64(n-8) > fuzzDevSize-binary.BigEndian.Uint64(p) {
				t.Fatalf("OFFSET_DATA of %d bytes at %d", n, binary.BigEndian.Uint64(p))
			}
		case replyBlockStatus:
			if n < 12 || (n-4)%8 != 0 || flags&replyFlagDone == 0 {
				t.Fatalf("BLOCK_STATUS of %d bytes", n)
			}
			var sum uint64
			for d := p[4:]; len(d) > 0; d = d[8:] {
				l := binary.BigEndian.Uint32(d)
				if l == 0 || binary.BigEndian.Uint32(d[4:])&^(stateHole|stateZero) != 0 {
					t.Fatalf("descriptor % x", d[:8])
				}
				sum += uint64(l)
			}
			if sum > fuzzDevSize {
				t.Fatalf("descriptors cover %d bytes of a %d-byte device", sum, fuzzDevSize)
			}
		case replyError, replyErrorOffset:
			want := uint32(6)
			if typ == replyErrorOffset {
				want = 14
			}
			if n < want || binary.BigEndian.Uint32(p) == 0 || uint32(binary.BigEndian.Uint16(p[4:])) != n-want {
				t.Fatalf("error chunk type %#x of %d bytes: % x", typ, n, p)
			}
		default:
			t.Fatalf("chunk type %#x", typ)
		}
	}
}
