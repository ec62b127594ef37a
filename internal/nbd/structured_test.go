package nbd

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/isboot/isboot/internal/blockdev"
)

// metaRequest encodes the data of NBD_OPT_{LIST,SET}_META_CONTEXT.
func metaRequest(export string, queries ...string) []byte {
	d := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	d = append(d, export...)
	d = binary.BigEndian.AppendUint32(d, uint32(len(queries)))
	for _, q := range queries {
		d = binary.BigEndian.AppendUint32(d, uint32(len(q)))
		d = append(d, q...)
	}
	return d
}

// goRequest encodes the data of NBD_OPT_GO asking for no information.
func goRequest(export string) []byte {
	d := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	return binary.BigEndian.AppendUint16(append(d, export...), 0)
}

// optionReplies sends one option and collects its replies up to the final one.
func (tc *testClient) optionReplies(t testing.TB, opt uint32, data []byte) (final uint32, replies [][]byte) {
	t.Helper()
	if err := tc.option(opt, data); err != nil {
		t.Fatal(err)
	}
	for {
		o, typ, d, err := tc.optionReply()
		if err != nil || o != opt {
			t.Fatalf("option %d: reply for option %d, %v", opt, o, err)
		}
		if typ != repInfo && typ != repMeta && typ != repServer {
			return typ, replies
		}
		replies = append(replies, d)
	}
}

// dialStructured connects, negotiates structured replies and (if meta) the
// base:allocation context, and enters transmission.
func dialStructured(t testing.TB, sock string, meta bool) *testClient {
	t.Helper()
	return dialStructuredNet(t, "unix", sock, meta)
}

// dialStructuredNet is dialStructured on any network.
func dialStructuredNet(t testing.TB, network, addr string, meta bool) *testClient {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	tc := &testClient{c: c, r: newReader(c), info: map[uint16][]byte{}}
	if err := tc.greet(flagCFixedNewstyle | flagCNoZeroes); err != nil {
		t.Fatal(err)
	}
	if typ, _ := tc.optionReplies(t, optStructured, nil); typ != repAck {
		t.Fatalf("STRUCTURED_REPLY: %#x", typ)
	}
	if meta {
		if typ, r := tc.optionReplies(t, optSetMeta, metaRequest("", metaBaseAllocation)); typ != repAck || len(r) != 1 {
			t.Fatalf("SET_META_CONTEXT: %#x %q", typ, r)
		}
	}
	typ, infos := tc.optionReplies(t, optGo, goRequest(""))
	if typ != repAck {
		t.Fatalf("GO: %#x", typ)
	}
	for _, d := range infos {
		if binary.BigEndian.Uint16(d) == infoExport {
			tc.size, tc.flags = binary.BigEndian.Uint64(d[2:]), binary.BigEndian.Uint16(d[10:])
		}
	}
	return tc
}

// chunk is one structured reply chunk.
type chunk struct {
	flags, typ uint16
	cookie     uint64
	payload    []byte
}

func readChunk(r *bufio.Reader) (chunk, error) {
	var h [chunkSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return chunk{}, err
	}
	if m := binary.BigEndian.Uint32(h[:]); m != magicStructRepl {
		return chunk{}, fmt.Errorf("reply magic %#x, want a structured chunk", m)
	}
	c := chunk{flags: binary.BigEndian.Uint16(h[4:]), typ: binary.BigEndian.Uint16(h[6:]), cookie: binary.BigEndian.Uint64(h[8:])}
	n := binary.BigEndian.Uint32(h[16:])
	if n > 64<<20 {
		return chunk{}, fmt.Errorf("chunk of %d bytes", n)
	}
	c.payload = make([]byte, n)
	_, err := io.ReadFull(r, c.payload)
	return c, err
}

// structuredReply reads the chunks of one reply (the next one on the wire), up to
// the DONE chunk. A simple reply comes back as a single chunk of type 0xffff
// carrying the error value.
func (tc *testClient) structuredReply() ([]chunk, error) {
	var chunks []chunk
	for {
		m, err := tc.r.Peek(4)
		if err != nil {
			return chunks, err
		}
		if binary.BigEndian.Uint32(m) == magicSimpleRepl {
			var h [replySize]byte
			io.ReadFull(tc.r, h[:])
			return append(chunks, chunk{flags: replyFlagDone, typ: 0xffff, cookie: binary.BigEndian.Uint64(h[8:]),
				payload: h[4:8]}), nil
		}
		c, err := readChunk(tc.r)
		if err != nil {
			return chunks, err
		}
		chunks = append(chunks, c)
		if c.flags&replyFlagDone != 0 {
			return chunks, nil
		}
	}
}

// errorChunk decodes an ERROR or ERROR_OFFSET payload.
func decodeErrorChunk(c chunk) (errno uint32, msg string, off uint64, err error) {
	p := c.payload
	if len(p) < 6 {
		return 0, "", 0, fmt.Errorf("error chunk of %d bytes", len(p))
	}
	errno, n := binary.BigEndian.Uint32(p), int(binary.BigEndian.Uint16(p[4:]))
	if 6+n > len(p) {
		return 0, "", 0, fmt.Errorf("message of %d bytes in a %d-byte chunk", n, len(p))
	}
	msg = string(p[6 : 6+n])
	rest := p[6+n:]
	switch {
	case c.typ == replyError && len(rest) == 0:
	case c.typ == replyErrorOffset && len(rest) == 8:
		off = binary.BigEndian.Uint64(rest)
	default:
		return 0, "", 0, fmt.Errorf("chunk type %#x with %d trailing bytes", c.typ, len(rest))
	}
	return errno, msg, off, nil
}

func TestHandshakeStructuredAndMetaContext(t *testing.T) {
	sock, _ := serveUnix(t, blockdev.NewMem(1<<20, 512, false), Options{ExportName: "disk"})
	tc := rawClient(t, sock)
	if err := tc.greet(flagCFixedNewstyle | flagCNoZeroes); err != nil {
		t.Fatal(err)
	}
	check := func(name string, opt uint32, data []byte, want uint32, wantContexts ...string) {
		t.Helper()
		typ, replies := tc.optionReplies(t, opt, data)
		var got []string
		for _, r := range replies {
			if len(r) < 4 {
				t.Fatalf("%s: short META_CONTEXT reply %x", name, r)
			}
			id := binary.BigEndian.Uint32(r)
			if (opt == optListMeta) != (id == 0) {
				t.Errorf("%s: context ID %d", name, id)
			}
			got = append(got, string(r[4:]))
		}
		if typ != want || strings.Join(got, ",") != strings.Join(wantContexts, ",") {
			t.Errorf("%s: reply %#x with contexts %q, want %#x with %q", name, typ, got, want, wantContexts)
		}
	}
	// Meta contexts need structured replies first.
	check("LIST before STRUCTURED_REPLY", optListMeta, metaRequest(""), repErrInvalid)
	check("SET before STRUCTURED_REPLY", optSetMeta, metaRequest("", metaBaseAllocation), repErrInvalid)
	check("STRUCTURED_REPLY with data", optStructured, []byte{1}, repErrInvalid)
	check("STRUCTURED_REPLY", optStructured, nil, repAck)

	check("LIST everything", optListMeta, metaRequest("disk"), repAck, metaBaseAllocation)
	check("LIST base: wildcard", optListMeta, metaRequest("", "base:"), repAck, metaBaseAllocation)
	check("LIST unknown namespace", optListMeta, metaRequest("", "qemu:dirty-bitmap:x"), repAck)
	check("LIST unknown export", optListMeta, metaRequest("nope"), repErrUnknown)
	check("SET base: selects nothing", optSetMeta, metaRequest("", "base:"), repAck)
	check("SET no query selects nothing", optSetMeta, metaRequest(""), repAck)
	check("SET base:allocation", optSetMeta, metaRequest("disk", "x-foo:bar", metaBaseAllocation), repAck, metaBaseAllocation)
	check("SET twice in one request", optSetMeta, metaRequest("", metaBaseAllocation, metaBaseAllocation), repAck, metaBaseAllocation)

	// Malformed requests: every length must stay inside the option data.
	bad := metaRequest("", metaBaseAllocation)
	check("query count too large", optSetMeta, append(binary.BigEndian.AppendUint32([]byte{0, 0, 0, 0}, 1<<31), bad[8:]...), repErrInvalid)
	check("query length past the end", optSetMeta, bad[:len(bad)-1], repErrInvalid)
	check("trailing bytes", optSetMeta, append(bad, 0), repErrInvalid)
	check("name length past the end", optListMeta, []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, repErrInvalid)
	check("too short", optListMeta, []byte{0, 0}, repErrInvalid)
	check("query above 4096 bytes", optListMeta, metaRequest("", "base:"+strings.Repeat("x", 4096)), repErrTooBig)
	check("unknown option", 42, nil, repErrUnsup)

	// The last SET failed, so no context is selected; select it again and GO.
	check("SET base:allocation", optSetMeta, metaRequest("", metaBaseAllocation), repAck, metaBaseAllocation)
	typ, infos := tc.optionReplies(t, optGo, goRequest("disk"))
	if typ != repAck {
		t.Fatalf("GO: %#x", typ)
	}
	var flags uint16
	for _, d := range infos {
		if binary.BigEndian.Uint16(d) == infoExport {
			flags = binary.BigEndian.Uint16(d[10:])
		}
	}
	if flags&FlagSendDF == 0 {
		t.Errorf("flags %#x lack SEND_DF after structured replies", flags)
	}
	tc.send(cmdBlockStatus, 0, 5, 0, 1<<20, nil)
	chunks, err := tc.structuredReply()
	if err != nil || len(chunks) != 1 || chunks[0].typ != replyBlockStatus {
		t.Fatalf("BLOCK_STATUS: %+v, %v", chunks, err)
	}
	if id := binary.BigEndian.Uint32(chunks[0].payload); id != metaIDAllocation {
		t.Errorf("BLOCK_STATUS for context %d, SET gave %d", id, metaIDAllocation)
	}
}

func TestHandshakeExportNameAfterStructured(t *testing.T) {
	sock, _ := serveUnix(t, blockdev.NewMem(1<<20, 512, false), Options{})
	tc := rawClient(t, sock)
	tc.greet(flagCFixedNewstyle | flagCNoZeroes)
	if typ, _ := tc.optionReplies(t, optStructured, nil); typ != repAck {
		t.Fatalf("STRUCTURED_REPLY: %#x", typ)
	}
	tc.option(optExportName, nil)
	var b [10]byte
	if _, err := io.ReadFull(tc.r, b[:]); err != nil {
		t.Fatal(err)
	}
	if f := binary.BigEndian.Uint16(b[8:]); f&FlagSendDF == 0 {
		t.Errorf("EXPORT_NAME flags %#x lack SEND_DF", f)
	}
	tc.send(cmdRead, 0, 1, 0, 512, nil)
	chunks, err := tc.structuredReply()
	if err != nil || len(chunks) != 1 || chunks[0].typ != replyOffsetData {
		t.Fatalf("read after EXPORT_NAME: %+v, %v", chunks, err)
	}
}

// partialDev reads half of what is asked and then fails, like a LUN whose second
// READ command comes back with a medium error.
type partialDev struct{ *blockdev.Mem }

func (d partialDev) ReadAt(p []byte, off int64) (int, error) {
	n, _ := d.Mem.ReadAt(p[:len(p)/2], off)
	return n, errMedium
}

func TestStructuredReads(t *testing.T) {
	dev := blockdev.NewMem(1<<20, 512, false)
	data := randBytes(1<<20, 7)
	dev.WriteAt(data, 0)
	sock, _ := serveUnix(t, dev, Options{MaxRequest: 1 << 16})
	tc := dialStructured(t, sock, false)
	for _, c := range []struct {
		name  string
		flags uint16
		off   uint64
		n     uint32
	}{{"aligned", 0, 4096, 8192}, {"unaligned", 0, 1000, 3000}, {"don't fragment", cmdFlagDF, 0, 1 << 16}, {"FUA", cmdFlagFUA, 512, 512}} {
		tc.send(cmdRead, c.flags, 9, c.off, c.n, nil)
		chunks, err := tc.structuredReply()
		if err != nil || len(chunks) != 1 {
			t.Fatalf("%s: %d chunks, %v", c.name, len(chunks), err)
		}
		ch := chunks[0]
		if ch.typ != replyOffsetData || ch.flags != replyFlagDone || ch.cookie != 9 || len(ch.payload) != 8+int(c.n) {
			t.Fatalf("%s: chunk type %d flags %d cookie %d, %d bytes", c.name, ch.typ, ch.flags, ch.cookie, len(ch.payload))
		}
		if off := binary.BigEndian.Uint64(ch.payload); off != c.off || !bytes.Equal(ch.payload[8:], data[c.off:c.off+uint64(c.n)]) {
			t.Errorf("%s: data for offset %d differs", c.name, off)
		}
	}
	// A zero-length read succeeds with no content chunk.
	tc.send(cmdRead, 0, 10, 0, 0, nil)
	if chunks, err := tc.structuredReply(); err != nil || len(chunks) != 1 || chunks[0].typ != replyNone {
		t.Errorf("zero-length read: %+v, %v", chunks, err)
	}
	// Refusals of reads are structured too (the spec forbids simple replies to reads).
	for _, c := range []struct {
		name  string
		flags uint16
		off   uint64
		n     uint32
	}{{"past the end", 0, 1<<20 - 512, 1024}, {"above max request", 0, 0, 1 << 17}, {"REQ_ONE on a read", cmdFlagReqOne, 0, 512}} {
		tc.send(cmdRead, c.flags, 11, c.off, c.n, nil)
		chunks, err := tc.structuredReply()
		if err != nil || len(chunks) != 1 || chunks[0].typ != replyError || chunks[0].flags != replyFlagDone {
			t.Fatalf("%s: %+v, %v", c.name, chunks, err)
		}
		if errno, msg, _, err := decodeErrorChunk(chunks[0]); err != nil || errno != errInval || msg == "" {
			t.Errorf("%s: errno %d %q, %v", c.name, errno, msg, err)
		}
	}
	// Writes succeed with simple replies and fail with error chunks.
	tc.send(cmdWrite, cmdFlagFUA, 12, 0, 512, make([]byte, 512))
	if chunks, err := tc.structuredReply(); err != nil || len(chunks) != 1 || chunks[0].typ != 0xffff || binary.BigEndian.Uint32(chunks[0].payload) != 0 {
		t.Errorf("write: %+v, %v", chunks, err)
	}
	tc.send(cmdTrim, 0, 13, 1<<20, 512, nil)
	if chunks, err := tc.structuredReply(); err != nil || len(chunks) != 1 || chunks[0].typ != replyError {
		t.Errorf("trim past the end: %+v, %v", chunks, err)
	}
	// DF is only for reads.
	tc.send(cmdFlush, cmdFlagDF, 14, 0, 0, nil)
	if chunks, err := tc.structuredReply(); err != nil || len(chunks) != 1 || chunks[0].typ != replyError {
		t.Errorf("flush with DF: %+v, %v", chunks, err)
	}
}

func TestStructuredReadFailure(t *testing.T) {
	mem := blockdev.NewMem(1<<20, 512, false)
	data := randBytes(1<<20, 8)
	mem.WriteAt(data, 0)
	sock, srv := serveUnix(t, partialDev{mem}, Options{Logf: func(string, ...any) {}})
	tc := dialStructured(t, sock, false)
	for _, c := range []struct {
		off  uint64
		n    uint32
		good int
	}{{4096, 8192, 4096}, {1000, 3000, 2304 - 1000}, {1024, 512, 256}} {
		// The unaligned read is bounced through [512, 4096): the device reads 1792
		// bytes of it, up to 2304.
		tc.send(cmdRead, 0, 3, c.off, c.n, nil)
		chunks, err := tc.structuredReply()
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		last := chunks[len(chunks)-1]
		if c.good > 0 {
			if len(chunks) != 2 || chunks[0].typ != replyOffsetData || chunks[0].flags&replyFlagDone != 0 {
				t.Fatalf("read %d+%d: chunks %+v", c.off, c.n, chunks)
			}
			got = chunks[0].payload[8:]
		} else if len(chunks) != 1 {
			t.Fatalf("read %d+%d: %d chunks, want only the error", c.off, c.n, len(chunks))
		}
		if !bytes.Equal(got, data[c.off:c.off+uint64(len(got))]) || len(got) != c.good {
			t.Errorf("read %d+%d: %d bytes delivered before the error, want %d", c.off, c.n, len(got), c.good)
		}
		errno, _, off, err := decodeErrorChunk(last)
		if err != nil || last.typ != replyErrorOffset || last.flags != replyFlagDone || errno != errIO || off != c.off+uint64(c.good) {
			t.Errorf("read %d+%d: error chunk type %#x errno %d at %d (%v), want EIO at %d", c.off, c.n, last.typ, errno, off, err, c.off+uint64(c.good))
		}
	}
	if srv.Stats().Errors != 3 {
		t.Errorf("errors %d, want 3", srv.Stats().Errors)
	}
	// Nothing read, or a failure claiming all was read: the error chunk alone, at
	// the start of the request.
	for _, dev := range []blockdev.Device{failingDev{mem}, claimAllDev{mem}} {
		sock, _ = serveUnix(t, dev, Options{Logf: func(string, ...any) {}})
		tc = dialStructured(t, sock, false)
		for _, r := range [][2]uint64{{1000, 3000}, {1024, 1024}} {
			tc.send(cmdRead, 0, 4, r[0], uint32(r[1]), nil)
			chunks, err := tc.structuredReply()
			if err != nil || len(chunks) != 1 {
				t.Fatalf("%T: failed read %v: %+v, %v", dev, r, chunks, err)
			}
			if errno, msg, off, err := decodeErrorChunk(chunks[0]); err != nil || chunks[0].typ != replyErrorOffset || errno != errIO || off != r[0] || msg == "" {
				t.Errorf("%T: failed read %v: type %#x errno %d %q at %d, %v", dev, r, chunks[0].typ, errno, msg, off, err)
			}
		}
	}
}

// claimAllDev fails every read but claims to have read it all.
type claimAllDev struct{ *blockdev.Mem }

func (claimAllDev) ReadAt(p []byte, _ int64) (int, error) { return len(p), errMedium }

// TestStructuredReadAllocatesNothing: answering a read, simple or structured, builds
// the reply in place and writes the pooled buffer as it is.
func TestStructuredReadAllocatesNothing(t *testing.T) {
	for _, structured := range []bool{false, true} {
		c1, c2 := net.Pipe()
		defer c1.Close()
		defer c2.Close()
		cn := &conn{s: NewServer(blockdev.NewMem(1<<20, 512, false), Options{}), c: c1,
			neg: negotiated{structured: structured}, w: bufio.NewWriterSize(io.Discard, 64<<10)}
		data := make([]byte, 128<<10)
		req := request{typ: cmdRead, cookie: 1, off: 4096, length: uint32(len(data))}
		if n := testing.AllocsPerRun(100, func() { cn.reply(req, 0, data) }); n != 0 {
			t.Errorf("structured=%v: %v allocations per read reply", structured, n)
		}
		if n := testing.AllocsPerRun(100, func() { cn.reply(req, errIO, data[:512]) }); n != 0 {
			t.Errorf("structured=%v: %v allocations per failed read reply", structured, n)
		}
	}
}

// extentDev answers Extents from a fixed list (or fails), whatever it is asked.
type extentDev struct {
	*blockdev.Mem
	ext []blockdev.Extent
	err error
}

func (d *extentDev) Extents(dst []blockdev.Extent, off, length int64) ([]blockdev.Extent, error) {
	return append(dst, d.ext...), d.err
}

// plainDev hides Mem's Extents: a device that cannot tell allocation.
type plainDev struct{ blockdev.Device }

type descriptor struct{ length, flags uint32 }

func (tc *testClient) blockStatus(t *testing.T, flags uint16, off uint64, n uint32) ([]descriptor, uint32) {
	t.Helper()
	if err := tc.send(cmdBlockStatus, flags, 21, off, n, nil); err != nil {
		t.Fatal(err)
	}
	chunks, err := tc.structuredReply()
	if err != nil || len(chunks) != 1 {
		t.Fatalf("BLOCK_STATUS %d+%d: %+v, %v", off, n, chunks, err)
	}
	c := chunks[0]
	switch c.typ {
	case replyBlockStatus:
	case replyError:
		errno, _, _, err := decodeErrorChunk(c)
		if err != nil {
			t.Fatal(err)
		}
		return nil, errno
	case 0xffff:
		return nil, binary.BigEndian.Uint32(c.payload)
	default:
		t.Fatalf("BLOCK_STATUS %d+%d: chunk type %#x", off, n, c.typ)
	}
	p := c.payload
	if c.flags != replyFlagDone || len(p) < 12 || (len(p)-4)%8 != 0 || binary.BigEndian.Uint32(p) != metaIDAllocation {
		t.Fatalf("BLOCK_STATUS %d+%d: malformed chunk flags %d payload %x", off, n, c.flags, p)
	}
	var ds []descriptor
	var sum uint64
	for p = p[4:]; len(p) > 0; p = p[8:] {
		d := descriptor{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])}
		if d.length == 0 {
			t.Fatalf("BLOCK_STATUS %d+%d: zero-length descriptor", off, n)
		}
		sum += uint64(d.length)
		ds = append(ds, d)
	}
	if sum > uint64(n) {
		t.Fatalf("BLOCK_STATUS %d+%d: descriptors cover %d bytes", off, n, sum)
	}
	if flags&cmdFlagReqOne != 0 && len(ds) != 1 {
		t.Fatalf("BLOCK_STATUS with REQ_ONE: %d descriptors", len(ds))
	}
	return ds, 0
}

func TestBlockStatus(t *testing.T) {
	dev := blockdev.NewMem(1<<20, 512, false)
	dev.WriteAt(randBytes(8192, 1), 0)     // data [0, 8K)
	dev.WriteAt(randBytes(512, 2), 64<<10) // data [64K, 64K+512)
	sock, _ := serveUnix(t, dev, Options{})
	tc := dialStructured(t, sock, true)
	const hz = stateHole | stateZero
	for _, c := range []struct {
		name  string
		flags uint16
		off   uint64
		n     uint32
		want  []descriptor
	}{
		{"whole device", 0, 0, 1 << 20, []descriptor{{8192, 0}, {64<<10 - 8192, hz}, {512, 0}, {1<<20 - 64<<10 - 512, hz}}},
		{"inside data", 0, 100, 200, []descriptor{{200, 0}}},
		{"unaligned across", 0, 8000, 400, []descriptor{{192, 0}, {208, hz}}},
		{"REQ_ONE", cmdFlagReqOne, 4096, 1 << 19, []descriptor{{4096, 0}}},
		{"REQ_ONE in a hole", cmdFlagReqOne, 8192, 4096, []descriptor{{4096, hz}}},
		{"last byte", 0, 1<<20 - 1, 1, []descriptor{{1, hz}}},
	} {
		got, errno := tc.blockStatus(t, c.flags, c.off, c.n)
		if errno != 0 || fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%s: %v (errno %d), want %v", c.name, got, errno, c.want)
		}
	}
	for _, c := range []struct {
		name   string
		flags  uint16
		off    uint64
		n      uint32
		errno  uint32
		simple bool
	}{
		{"past the end", 0, 1<<20 - 512, 1024, errInval, false},
		{"offset overflow", 0, ^uint64(0) - 10, 512, errInval, false},
		{"zero length", 0, 0, 0, errInval, false},
		{"DF on block status", cmdFlagDF, 0, 512, errInval, false},
	} {
		if got, errno := tc.blockStatus(t, c.flags, c.off, c.n); errno != c.errno {
			t.Errorf("%s: %v errno %d, want %d", c.name, got, errno, c.errno)
		}
	}
	// Without a selected context BLOCK_STATUS is invalid: an error chunk with
	// structured replies, a simple reply without them.
	for _, structured := range []bool{true, false} {
		var tc *testClient
		if structured {
			tc = dialStructured(t, sock, false)
		} else {
			tc = dialTest(t, "unix", sock, "")
		}
		if _, errno := tc.blockStatus(t, 0, 0, 512); errno != errInval {
			t.Errorf("structured=%v, no context: errno %d, want EINVAL", structured, errno)
		}
	}
}

func TestBlockStatusFromDevice(t *testing.T) {
	var logs []string
	logf := func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) }
	mem := blockdev.NewMem(1<<20, 4096, false)
	const h, z = blockdev.ExtentHole, blockdev.ExtentZero
	for _, c := range []struct {
		name string
		dev  blockdev.Device
		want []descriptor
	}{
		{"cannot tell", plainDev{mem}, []descriptor{{1 << 20, 0}}},
		{"fails", &extentDev{Mem: mem, err: errors.New("target gone")}, []descriptor{{1 << 20, 0}}},
		{"hole without zero, anchored zero", &extentDev{Mem: mem, ext: []blockdev.Extent{{Length: 4096, Flags: h}, {Length: 8192, Flags: z}}},
			[]descriptor{{4096, stateHole}, {8192, stateZero}}},
		{"merges, stops at a bad extent", &extentDev{Mem: mem, ext: []blockdev.Extent{{Length: 4096}, {Length: 4096}, {Length: 0}, {Length: 4096, Flags: h}}},
			[]descriptor{{8192, 0}}},
		{"clips what overshoots", &extentDev{Mem: mem, ext: []blockdev.Extent{{Length: 4096, Flags: h | z}, {Length: 1 << 40}}},
			[]descriptor{{4096, stateHole | stateZero}, {1<<20 - 4096, 0}}},
		{"negative length", &extentDev{Mem: mem, ext: []blockdev.Extent{{Length: -4096}}}, []descriptor{{1 << 20, 0}}},
	} {
		logs = nil
		sock, _ := serveUnix(t, c.dev, Options{Logf: logf})
		tc := dialStructured(t, sock, true)
		got, errno := tc.blockStatus(t, 0, 0, 1<<20)
		if errno != 0 || fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%s: %v (errno %d), want %v", c.name, got, errno, c.want)
		}
		if c.name == "fails" && (len(logs) != 1 || !strings.Contains(logs[0], "target gone")) {
			t.Errorf("device failure logged as %q", logs)
		}
	}
	// Many small extents: the reply stops at maxDescriptors, and the client goes on
	// from where it ends.
	many := &extentDev{Mem: blockdev.NewMem(1<<20, 512, false)}
	for i := range 2048 {
		many.ext = append(many.ext, blockdev.Extent{Length: 512, Flags: uint32(i % 2)})
	}
	sock, _ := serveUnix(t, many, Options{})
	tc := dialStructured(t, sock, true)
	got, _ := tc.blockStatus(t, 0, 0, 1<<20)
	if len(got) != maxDescriptors {
		t.Errorf("%d descriptors, want the maximum %d", len(got), maxDescriptors)
	}
}
