package nbd

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
)

func rawClient(t *testing.T, sock string) *testClient {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &testClient{c: c, r: newReader(c)}
}

func TestHandshakeOptions(t *testing.T) {
	sock, _ := serveUnix(t, blockdev.NewMem(1<<20, 512, false), Options{ExportName: "disk", Description: "test disk"})
	tc := rawClient(t, sock)
	if err := tc.greet(flagCFixedNewstyle | flagCNoZeroes); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		opt  uint32
		data []byte
		want uint32
	}{
		{optList, nil, repServer},
		{optList, []byte("x"), repErrInvalid},
		{99, nil, repErrUnsup},
		{optInfo, []byte{0, 0}, repErrInvalid},
		{optInfo, []byte{0, 0, 0, 4, 'n', 'o', 'p', 'e', 0, 0}, repErrUnknown},
	} {
		if err := tc.option(c.opt, c.data); err != nil {
			t.Fatal(err)
		}
		opt, typ, data, err := tc.optionReply()
		if err != nil || opt != c.opt || typ != c.want {
			t.Fatalf("option %d %q: reply option %d type %#x (%v), want type %#x", c.opt, c.data, opt, typ, err, c.want)
		}
		if typ == repServer {
			if n := binary.BigEndian.Uint32(data); string(data[4:4+n]) != "disk" || string(data[4+n:]) != "test disk" {
				t.Errorf("LIST entry %q", data)
			}
			if _, typ, _, err := tc.optionReply(); err != nil || typ != repAck {
				t.Errorf("LIST not ended by ACK: %#x %v", typ, err)
			}
		}
	}
	// INFO for the named export with NAME and DESCRIPTION requested, then EXPORT_NAME.
	info := binary.BigEndian.AppendUint32(nil, 4)
	info = append(info, "disk"...)
	info = binary.BigEndian.AppendUint16(info, 2)
	info = binary.BigEndian.AppendUint16(info, infoName)
	info = binary.BigEndian.AppendUint16(info, infoDescription)
	tc.option(optInfo, info)
	got := map[uint16]string{}
	for {
		_, typ, data, err := tc.optionReply()
		if err != nil {
			t.Fatal(err)
		}
		if typ == repAck {
			break
		}
		got[binary.BigEndian.Uint16(data)] = string(data[2:])
	}
	if got[infoName] != "disk" || got[infoDescription] != "test disk" || len(got[infoExport]) != 10 || len(got[infoBlockSize]) != 12 {
		t.Errorf("INFO replies %v", got)
	}
	tc.option(optExportName, []byte("disk"))
	var b [10]byte
	if _, err := io.ReadFull(tc.r, b[:]); err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint64(b[:]) != 1<<20 || binary.BigEndian.Uint16(b[8:])&FlagHasFlags == 0 {
		t.Errorf("EXPORT_NAME reply % x", b)
	}
	// NO_ZEROES was negotiated, so transmission starts right after the 10 bytes.
	if errno, _, err := tc.do(cmdRead, 0, 0, 512, nil); err != nil || errno != 0 {
		t.Errorf("read after EXPORT_NAME: errno %d, %v", errno, err)
	}
}

func TestHandshakeExportNameZeroesAndAbort(t *testing.T) {
	sock, _ := serveUnix(t, blockdev.NewMem(1<<20, 512, false), Options{})
	tc := rawClient(t, sock)
	tc.greet(flagCFixedNewstyle)
	tc.option(optExportName, nil)
	b := make([]byte, 10+124)
	if _, err := io.ReadFull(tc.r, b); err != nil {
		t.Fatalf("EXPORT_NAME without NO_ZEROES: %v", err)
	}
	if errno, _, err := tc.do(cmdFlush, 0, 0, 0, nil); err != nil || errno != 0 {
		t.Errorf("flush after EXPORT_NAME: errno %d, %v", errno, err)
	}

	ab := rawClient(t, sock)
	ab.greet(flagCFixedNewstyle)
	ab.option(optAbort, nil)
	if _, typ, _, err := ab.optionReply(); err != nil || typ != repAck {
		t.Errorf("ABORT: reply %#x, %v", typ, err)
	}
	if _, err := ab.r.ReadByte(); err != io.EOF {
		t.Errorf("connection open after ABORT: %v", err)
	}

	bad := rawClient(t, sock)
	bad.greet(flagCFixedNewstyle)
	bad.option(optExportName, []byte("nosuch"))
	if _, err := bad.r.ReadByte(); err != io.EOF {
		t.Errorf("EXPORT_NAME of an unknown export: connection not closed (%v)", err)
	}
}
