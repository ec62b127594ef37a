package nbd

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
)

// testClient is a minimal NBD client for the cases libnbd's tools cannot provoke
// (out-of-range requests, writes to a read-only export, replies out of order).
type testClient struct {
	c     net.Conn
	r     *bufio.Reader
	size  uint64
	flags uint16
	// info replies received during GO, by info type
	info map[uint16][]byte
}

func dialTest(t testing.TB, network, addr, export string) *testClient {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	tc := &testClient{c: c, r: bufio.NewReader(c), info: map[uint16][]byte{}}
	if err := tc.handshakeGo(export); err != nil {
		t.Fatal(err)
	}
	return tc
}

func (tc *testClient) handshakeGo(export string) error {
	var b [18]byte
	if _, err := io.ReadFull(tc.r, b[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint64(b[0:]) != magicNBD || binary.BigEndian.Uint64(b[8:]) != magicIHaveOpt {
		return fmt.Errorf("bad greeting % x", b)
	}
	if binary.BigEndian.Uint16(b[16:])&flagFixedNewstyle == 0 {
		return fmt.Errorf("server is not fixed newstyle")
	}
	msg := binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle|flagCNoZeroes)
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint16(data, 1)
	data = binary.BigEndian.AppendUint16(data, infoBlockSize)
	msg = binary.BigEndian.AppendUint64(msg, magicIHaveOpt)
	msg = binary.BigEndian.AppendUint32(msg, optGo)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(data)))
	msg = append(msg, data...)
	if _, err := tc.c.Write(msg); err != nil {
		return err
	}
	for {
		var h [20]byte
		if _, err := io.ReadFull(tc.r, h[:]); err != nil {
			return err
		}
		typ := binary.BigEndian.Uint32(h[12:])
		d := make([]byte, binary.BigEndian.Uint32(h[16:]))
		if _, err := io.ReadFull(tc.r, d); err != nil {
			return err
		}
		switch typ {
		case repAck:
			return nil
		case repInfo:
			it := binary.BigEndian.Uint16(d)
			tc.info[it] = d[2:]
			if it == infoExport {
				tc.size = binary.BigEndian.Uint64(d[2:])
				tc.flags = binary.BigEndian.Uint16(d[10:])
			}
		default:
			return fmt.Errorf("GO: reply type %#x: %q", typ, d)
		}
	}
}

func (tc *testClient) send(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) error {
	_, err := tc.c.Write(encodeRequest(typ, flags, cookie, off, length, payload))
	return err
}

// encodeRequest encodes one request and its payload.
func encodeRequest(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, payload...)
}

// recv reads one simple reply; readLen is the payload length if it answers a read.
func (tc *testClient) recv(readLen func(cookie uint64) int) (cookie uint64, errno uint32, data []byte, err error) {
	var h [replySize]byte
	if _, err = io.ReadFull(tc.r, h[:]); err != nil {
		return
	}
	if m := binary.BigEndian.Uint32(h[:]); m != magicSimpleRepl {
		return 0, 0, nil, fmt.Errorf("bad reply magic %#x", m)
	}
	errno = binary.BigEndian.Uint32(h[4:])
	cookie = binary.BigEndian.Uint64(h[8:])
	if errno == 0 && readLen != nil {
		data = make([]byte, readLen(cookie))
		_, err = io.ReadFull(tc.r, data)
	}
	return
}

// do sends one request and waits for its reply.
func (tc *testClient) do(typ, flags uint16, off uint64, length uint32, payload []byte) (uint32, []byte, error) {
	if err := tc.send(typ, flags, 7, off, length, payload); err != nil {
		return 0, nil, err
	}
	_, errno, data, err := tc.recv(func(uint64) int {
		if typ == cmdRead {
			return int(length)
		}
		return 0
	})
	return errno, data, err
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

// greet reads the server greeting and sends client flags.
func (tc *testClient) greet(cflags uint32) error {
	var b [18]byte
	if _, err := io.ReadFull(tc.r, b[:]); err != nil {
		return err
	}
	_, err := tc.c.Write(binary.BigEndian.AppendUint32(nil, cflags))
	return err
}

func (tc *testClient) option(opt uint32, data []byte) error {
	msg := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	msg = binary.BigEndian.AppendUint32(msg, opt)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(data)))
	_, err := tc.c.Write(append(msg, data...))
	return err
}

// optionReply reads one option reply: its option, type and data.
func (tc *testClient) optionReply() (opt, typ uint32, data []byte, err error) {
	var h [20]byte
	if _, err = io.ReadFull(tc.r, h[:]); err != nil {
		return
	}
	if m := binary.BigEndian.Uint64(h[:]); m != magicOptReply {
		return 0, 0, nil, fmt.Errorf("bad option reply magic %#x", m)
	}
	data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	_, err = io.ReadFull(tc.r, data)
	return binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:]), data, err
}
