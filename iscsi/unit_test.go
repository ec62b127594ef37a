package iscsi

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestCRC32CVector(t *testing.T) {
	// RFC 7143 appendix (from RFC 3720 B.4): 32 bytes of zeros.
	if got := crc32c(make([]byte, 32)); got != 0x8a9136aa {
		t.Fatalf("crc32c(zeros) = %#x", got)
	}
	ones := bytes.Repeat([]byte{0xff}, 32)
	if got := crc32c(ones); got != 0x62a8ab43 {
		t.Fatalf("crc32c(ones) = %#x", got)
	}
}

func TestPDURoundTrip(t *testing.T) {
	for _, digests := range []bool{false, true} {
		var wire bytes.Buffer
		w := pduWriter{w: &wire, hdrDigest: digests, dataDigest: digests}
		var h bhs
		h.reset(opDataIn)
		h[1] = flagFinal
		h.setU32(16, 0x1234)
		small := []byte("hello")
		big := bytes.Repeat([]byte{7}, 20000)
		if err := w.writePDU(&h, small); err != nil {
			t.Fatal(err)
		}
		if err := w.writePDU(&h, big); err != nil {
			t.Fatal(err)
		}
		if err := w.flush(); err != nil {
			t.Fatal(err)
		}
		raw := bytes.Clone(wire.Bytes())
		r := pduReader{r: bytes.NewReader(raw), hdrDigest: digests, dataDigest: digests, maxData: 1 << 16}
		for _, want := range [][]byte{small, big} {
			if err := r.readHeader(); err != nil {
				t.Fatal(err)
			}
			if r.hdr.itt() != 0x1234 || r.hdr.opcode() != opDataIn || r.hdr.dataLen() != len(want) {
				t.Fatalf("header: %x", r.hdr[:8])
			}
			got := make([]byte, r.hdr.dataLen())
			if err := r.readData(got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("data differs")
			}
		}
		if !digests {
			continue
		}
		// Corrupt one data byte, then one header byte: both are digest errors.
		bad := bytes.Clone(raw)
		bad[bhsLen+4+1] ^= 1
		r = pduReader{r: bytes.NewReader(bad), hdrDigest: true, dataDigest: true, maxData: 1 << 16}
		r.readHeader()
		if err := r.readData(make([]byte, len(small))); !errors.Is(err, errDigest) {
			t.Fatalf("corrupt data: %v", err)
		}
		bad = bytes.Clone(raw)
		bad[20] ^= 1
		r = pduReader{r: bytes.NewReader(bad), hdrDigest: true, dataDigest: true, maxData: 1 << 16}
		if err := r.readHeader(); !errors.Is(err, errDigest) {
			t.Fatalf("corrupt header: %v", err)
		}
	}
}

func TestPDUSegmentLimit(t *testing.T) {
	var h bhs
	h.reset(opSCSIResp)
	h.setDataLen(8193)
	r := pduReader{r: bytes.NewReader(h[:]), maxData: 8192}
	var pe *ProtocolError
	if err := r.readHeader(); !errors.As(err, &pe) || !strings.Contains(err.Error(), "exceeds MaxRecvDataSegmentLength 8192") {
		t.Fatalf("oversized segment: %v", err)
	}
}

func TestParseText(t *testing.T) {
	kvs, err := parseText([]byte("A=1\x00HeaderDigest=CRC32C,None\x00TargetAlias=\x00\x00\x00"))
	if err != nil || len(kvs) != 3 || kvs[1] != (KV{"HeaderDigest", "CRC32C,None"}) || kvs[2].Value != "" {
		t.Fatalf("%v %v", kvs, err)
	}
	for _, bad := range []string{"noequals\x00", "=value\x00", strings.Repeat("k", 64) + "=v\x00", "k=" + strings.Repeat("v", 8193), "ke y=v\x00"} {
		if _, err := parseText([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad[:min(len(bad), 20)])
		}
	}
	if got := encodeText([]KV{{"a", "b"}, {"c", ""}}); string(got) != "a=b\x00c=\x00" {
		t.Fatalf("encode: %q", got)
	}
}

func TestNegotiate(t *testing.T) {
	cases := []struct {
		key, ours, theirs, want string
		err                     bool
	}{
		{"HeaderDigest", "CRC32C", "CRC32C", "CRC32C", false},
		{"HeaderDigest", "CRC32C", "None", "", true},
		{"DataDigest", "None,CRC32C", "CRC32C", "CRC32C", false},
		{"InitialR2T", "No", "Yes", "Yes", false}, // OR
		{"InitialR2T", "Yes", "No", "", true},
		{"ImmediateData", "Yes", "No", "No", false}, // AND
		{"ImmediateData", "No", "Yes", "", true},
		{"MaxBurstLength", "16776192", "262144", "262144", false}, // min
		{"MaxBurstLength", "262144", "1048576", "", true},
		{"MaxBurstLength", "262144", "100", "", true}, // below 512
		{"DefaultTime2Wait", "0", "2", "2", false},    // max
		{"ErrorRecoveryLevel", "0", "0x0", "0", false},
		{"MaxOutstandingR2T", "16", "Reject", "", true},
		{"MaxOutstandingR2T", "16", "abc", "", true},
		{"TargetAlias", "", "disk", "disk", false},
	}
	for _, c := range cases {
		got, err := negotiate(c.key, c.ours, c.theirs)
		if (err != nil) != c.err || got != c.want {
			t.Errorf("negotiate(%s, %q, %q) = %q, %v", c.key, c.ours, c.theirs, got, err)
		}
	}
	if a := answer("MaxBurstLength", "65536", "262144"); a != "65536" {
		t.Errorf("answer min: %s", a)
	}
	if a := answer("HeaderDigest", "CRC32C,None", "None,CRC32C"); a != "None" {
		t.Errorf("answer list: %s", a)
	}
	if a := answer("X-Vendor", "1", ""); a != "NotUnderstood" {
		t.Errorf("answer unknown: %s", a)
	}
}

// The digest offers: flag and command-line spellings, case-insensitive.
func TestParseDigest(t *testing.T) {
	for in, want := range map[string]Digest{
		"none": DigestNone, "None": DigestNone, "crc32c": DigestCRC32C, "CRC32C": DigestCRC32C,
		"CRC32C,None": DigestPreferCRC32C, "crc32c, none": DigestPreferCRC32C, "None,CRC32C": DigestAuto,
	} {
		if got, err := ParseDigest(in); err != nil || got != want {
			t.Errorf("ParseDigest(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "md5", "crc32c,crc32c", "none,", "CRC32"} {
		if got, err := ParseDigest(bad); err == nil {
			t.Errorf("ParseDigest(%q) = %q, want an error", bad, got)
		}
	}
	for d, want := range map[Digest]string{DigestAuto: "None,CRC32C", DigestNone: "None", DigestCRC32C: "CRC32C", DigestPreferCRC32C: "CRC32C,None"} {
		if d.offer() != want || d.Required() != !strings.Contains(want, ",") {
			t.Errorf("%q: offer %q, required %v", d, d.offer(), d.Required())
		}
	}
	cfg := Config{Portals: []string{"a:1"}, TargetName: "t", HeaderDigest: "md5"}
	if _, err := cfg.withDefaults(); err == nil {
		t.Error("a config with HeaderDigest md5 was accepted")
	}
}

// IsPermanent sorts errors into what retrying cannot cure and what may heal.
func TestIsPermanent(t *testing.T) {
	refusedDigest := &NegotiationError{Key: "HeaderDigest", Offered: "CRC32C", Answered: "None"}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&LoginError{Class: 2, Detail: 1}, true},  // authentication failed
		{&LoginError{Class: 2, Detail: 3}, true},  // target not found
		{&LoginError{Class: 2, Detail: 6}, false}, // too many connections
		{&LoginError{Class: 3, Detail: 1}, false}, // service unavailable
		{&LoginError{Class: 3, Detail: 2}, false}, // out of resources
		{refusedDigest, true},
		{fmt.Errorf("iscsi: giving up after 3 attempts: %w", refusedDigest), true},
		{permanentError{protoErr("target chose iSCSI version 5")}, true},
		{protoErr("unexpected R2T in full-feature phase"), false}, // recovered by a reconnect
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, false},
		{&net.OpError{Op: "read", Err: syscall.ENETUNREACH}, false},
		{context.DeadlineExceeded, false},
		{&redirectError{addr: "a:1", permanent: true}, false},
		{nil, false},
	} {
		if got := IsPermanent(c.err); got != c.want {
			t.Errorf("IsPermanent(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	if got := refusedDigest.Error(); got != "iscsi: target refused HeaderDigest=CRC32C (answered None)" {
		t.Errorf("message %q", got)
	}
	if _, err := negotiate("HeaderDigest", "CRC32C", "Irrelevant"); !IsPermanent(err) || !strings.Contains(err.Error(), "refused HeaderDigest=CRC32C (answered Irrelevant)") {
		t.Errorf("negotiate Irrelevant: %v", err)
	}
}

func TestCHAPExchange(t *testing.T) {
	cfg := &Config{CHAPUser: "u", CHAPSecret: "initiator-secret", RevCHAPUser: "tgt", RevCHAPSecret: "target-secret"}
	var st chapState
	challenge := []byte("0123456789abcdef")
	kvs, err := st.respond(cfg, map[string]string{"CHAP_A": "5", "CHAP_I": "7", "CHAP_C": "0b" + "MDEyMzQ1Njc4OWFiY2RlZg=="}, chapOffer)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range kvs {
		got[kv.Key] = kv.Value
	}
	h := md5.New()
	h.Write([]byte{7})
	h.Write([]byte("initiator-secret"))
	h.Write(challenge)
	if got["CHAP_N"] != "u" || got["CHAP_R"] != encodeHex(h.Sum(nil)) {
		t.Fatalf("response: %v", got)
	}
	ours, _ := decodeBinary("CHAP_C", got["CHAP_C"])
	if len(ours) < 16 || bytes.Equal(ours, challenge) {
		t.Fatalf("our challenge %x", ours)
	}
	id, _ := parseNumber("CHAP_I", got["CHAP_I"])
	good := encodeHex(chapResponse(5, byte(id), "target-secret", ours))
	if err := st.verifyTarget(cfg, map[string]string{"CHAP_N": "tgt", "CHAP_R": good}); err != nil {
		t.Fatalf("good target answer refused: %v", err)
	}
	for _, bad := range []map[string]string{
		{"CHAP_N": "tgt", "CHAP_R": encodeHex(chapResponse(5, byte(id), "initiator-secret", ours))},
		{"CHAP_N": "other", "CHAP_R": good},
		{"CHAP_N": "tgt"},
	} {
		if err := st.verifyTarget(cfg, bad); err == nil {
			t.Errorf("accepted %v", bad)
		}
	}
	// A later target that reflects that challenge is refused.
	var st2 chapState
	if _, err := st2.respond(cfg, map[string]string{"CHAP_A": "5", "CHAP_I": "1", "CHAP_C": got["CHAP_C"]}, chapOffer); err != nil {
		t.Fatal(err)
	}
	if err := st2.verifyTarget(cfg, map[string]string{"CHAP_N": "tgt", "CHAP_R": good}); err == nil {
		t.Fatalf("reflected challenge accepted")
	}
	// Algorithms 6 and 8 produce digests of their size.
	for alg, size := range map[int]int{5: 16, 6: 20, 8: 32} {
		if n := len(chapResponse(alg, 1, "s", []byte("c"))); n != size {
			t.Errorf("CHAP_A=%d: %d bytes", alg, n)
		}
	}
	if _, err := st.respond(cfg, map[string]string{"CHAP_A": "9", "CHAP_I": "1", "CHAP_C": "0x01"}, chapOffer); err == nil {
		t.Errorf("unknown CHAP_A accepted")
	}
	// 7 is never offered (tgtd reads it as SHA-1), so a target may not choose it.
	if _, err := st.respond(cfg, map[string]string{"CHAP_A": "7", "CHAP_I": "1", "CHAP_C": "0x01"}, chapOffer); err == nil {
		t.Errorf("CHAP_A=7 accepted though not offered")
	}
}

func TestConfigSecretsDiffer(t *testing.T) {
	c := Config{Portals: []string{"x:1"}, TargetName: "t", CHAPUser: "u", CHAPSecret: "same-secret1", RevCHAPUser: "r", RevCHAPSecret: "same-secret1"}
	if _, err := c.withDefaults(); err == nil || strings.Contains(err.Error(), "same-secret1") {
		t.Fatalf("equal secrets: %v", err)
	}
}

// LUN addresses: a single-level LUN prints and parses as its number, any other
// address as its 8 bytes, and both ways are lossless.
func TestLUNAddr(t *testing.T) {
	for _, c := range []struct {
		addr   LUNAddr
		str    string
		number uint64
		ok     bool
	}{
		{LUNAddr{}, "0", 0, true},
		{LUNAddr{0, 1}, "1", 1, true},
		{LUNAddr{0, 255}, "255", 255, true},
		{LUNAddr{0x41, 0x2c}, "300", 300, true},                            // flat space
		{LUNAddr{0x7f, 0xff}, "16383", 16383, true},                        // flat space, the last
		{LUNAddr{0x40, 0x05}, "4005000000000000", 5, true},                 // flat space for a small LUN: kept as is
		{LUNAddr{0x01, 0x05}, "0105000000000000", 0, false},                // bus 1, LUN 5
		{LUNAddr{0, 1, 0, 2}, "0001000200000000", 0, false},                // two levels
		{LUNAddr{0xd2, 0, 0, 0, 0, 0, 0, 1}, "d200000000000001", 0, false}, // extended
	} {
		if got := c.addr.String(); got != c.str {
			t.Errorf("%x: String %q, want %q", c.addr[:], got, c.str)
		}
		if n, ok := c.addr.Number(); n != c.number || ok != c.ok {
			t.Errorf("%x: Number %d %v, want %d %v", c.addr[:], n, ok, c.number, c.ok)
		}
		if back, err := ParseLUNAddr(c.str); err != nil || back != c.addr {
			t.Errorf("ParseLUNAddr(%q) = %x, %v; want %x", c.str, back[:], err, c.addr[:])
		}
		if text, _ := c.addr.MarshalText(); string(text) != c.str {
			t.Errorf("%x: MarshalText %q", c.addr[:], text)
		}
	}
	for _, bad := range []string{"16384", "-1", "0x12c", "01050000000000zz", "01050000"} {
		if a, err := ParseLUNAddr(bad); err == nil {
			t.Errorf("ParseLUNAddr(%q) = %x, want an error", bad, a[:])
		}
	}
	// The config: LUNAddr wins and names LUN; without it, LUN's single-level form.
	for _, c := range []struct {
		lun     uint64
		addr    LUNAddr
		wantLUN uint64
		want    LUNAddr
		err     string
	}{
		{300, LUNAddr{}, 300, LUNAddr{0x41, 0x2c}, ""},
		{0, LUNAddr{0x41, 0x2c}, 300, LUNAddr{0x41, 0x2c}, ""},
		{261, LUNAddr{0x01, 0x05}, 0, LUNAddr{0x01, 0x05}, ""}, // the iBFT's scsilun number is dropped
		{7, LUNAddr{0, 5}, 0, LUNAddr{}, "LUN 7, but the 8-byte LUN 0005000000000000 is LUN 5"},
		{20000, LUNAddr{}, 0, LUNAddr{}, "LUN 20000 has no single-level SAM form"},
	} {
		cfg := Config{Portals: []string{"a:1"}, TargetName: "t", LUN: c.lun, LUNAddr: c.addr}
		got, err := cfg.withDefaults()
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("LUN %d, %x: %v, want %q", c.lun, c.addr[:], err, c.err)
			}
			continue
		}
		if err != nil || got.LUN != c.wantLUN || got.LUNAddr != c.want || newSession(got).lunBytes != c.want {
			t.Errorf("LUN %d, %x: LUN %d, LUNAddr %x, %v", c.lun, c.addr[:], got.LUN, got.LUNAddr[:], err)
		}
	}
}

func TestSense(t *testing.T) {
	fixed := make([]byte, 18)
	fixed[0], fixed[2], fixed[12], fixed[13] = 0x70, 0x06, 0x29, 0x00
	if k, asc, _, ok := parseSense(fixed); !ok || k != senseUnitAttention || asc != 0x29 {
		t.Errorf("fixed sense: %x %x", k, asc)
	}
	if k, asc, q, ok := parseSense([]byte{0x72, 0x05, 0x24, 0x01}); !ok || k != 5 || asc != 0x24 || q != 1 {
		t.Errorf("descriptor sense")
	}
	if _, _, _, ok := parseSense(nil); ok {
		t.Errorf("empty sense parsed")
	}
}

// TestSCSIStatusRetries drives the command path with a stand-in connection that
// answers each attempt with the next scripted status: UNIT ATTENTION, BUSY and
// TASK SET FULL are retried without the caller noticing; other errors surface once.
func TestSCSIStatusRetries(t *testing.T) {
	type reply struct {
		status byte
		key    byte
	}
	cases := []struct {
		name    string
		replies []reply
		wantErr string
	}{
		{"retried", []reply{{statusCheckCondition, senseUnitAttention}, {statusBusy, 0}, {statusTaskSetFull, 0}, {statusGood, 0}}, ""},
		{"illegal request", []reply{{statusCheckCondition, senseIllegalRequest}}, "CHECK CONDITION, illegal request"},
		{"medium error after UA", []reply{{statusCheckCondition, senseUnitAttention}, {statusCheckCondition, senseMediumError}}, "medium error"},
		{"reservation conflict", []reply{{statusReservation, 0}}, "SCSI status 0x18"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, _ := (&Config{Portals: []string{"x:1"}, TargetName: "t", QueueDepth: 2}).withDefaults()
			s := newSession(cfg)
			fake := &conn{s: s, gen: 1}
			attempts := 0
			go func() {
				for ref := range s.cmdCh {
					if !s.claim(ref, fake.gen) {
						continue
					}
					r := c.replies[min(attempts, len(c.replies)-1)]
					attempts++
					ref.t.status = r.status
					if r.key != 0 {
						ref.t.senseLen = copy(ref.t.sense[:], []byte{0x70, 0, r.key, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0})
					}
					s.complete(fake, ref.t)
				}
			}()
			defer close(s.cmdCh)
			_, err := s.exec("READ", cdbRW(false, false, 0, 1), true, make([]byte, 512))
			if c.wantErr == "" {
				if err != nil || attempts != len(c.replies) {
					t.Fatalf("err %v after %d attempts", err, attempts)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) || attempts != len(c.replies) {
				t.Fatalf("err %v after %d attempts, want %q", err, attempts, c.wantErr)
			}
			if s.Stats().Errors != 1 {
				t.Fatalf("errors not counted: %+v", s.Stats())
			}
		})
	}
}

// TestReaderTargetMessages feeds target PDUs to the full-feature reader: async
// events that end the connection, a reject, a target ping that must be answered,
// and Data-In that must stay inside the command's buffer.
func TestReaderTargetMessages(t *testing.T) {
	cfg, _ := (&Config{Portals: []string{"x:1"}, TargetName: "t", QueueDepth: 2}).withDefaults()
	s := newSession(cfg)
	pdu := func(op byte, mod func(h *bhs), data []byte) []byte {
		var h bhs
		h.reset(op)
		h[1] = flagFinal
		h.setU32(16, reservedTag)
		h.setU32(20, reservedTag)
		h.setU32(28, 1)
		h.setU32(32, 10)
		if mod != nil {
			mod(&h)
		}
		var b bytes.Buffer
		w := pduWriter{w: &b}
		w.writePDU(&h, data)
		w.flush()
		return b.Bytes()
	}
	run := func(stream []byte) (*conn, error) {
		c := &conn{s: s, gen: 1, scratch: make([]byte, 8192), ctrl: make(chan ctrlReq, 4),
			windowOpen: make(chan struct{}, 1), tmfResp: make(chan byte, 1), logoutResp: make(chan byte, 1)}
		c.rd = pduReader{r: bytes.NewReader(stream), maxData: 8192}
		return c, c.readOne()
	}
	// Event 1 (a logout request) is answered, not fatal: events_test.go.
	for ev, want := range map[byte]string{2: "drops the connection", 3: "drops the connection"} {
		if _, err := run(pdu(opAsyncMsg, func(h *bhs) { h[36] = ev }, nil)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("async event %d: %v", ev, err)
		}
	}
	if _, err := run(pdu(opAsyncMsg, func(h *bhs) { h[36] = 0 }, make([]byte, 20))); err != nil {
		t.Errorf("SCSI async event: %v", err)
	}
	var pe *ProtocolError
	if _, err := run(pdu(opReject, func(h *bhs) { h[2] = 9 }, make([]byte, 48))); !errors.As(err, &pe) {
		t.Errorf("reject: %v", err)
	}
	c, err := run(pdu(opNOPIn, func(h *bhs) { h.setU32(20, 0x77) }, []byte("ping")))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case q := <-c.ctrl:
		if q.kind != ctrlNOPReply || q.ttt != 0x77 || string(q.data) != "ping" {
			t.Errorf("NOP reply %+v", q)
		}
	default:
		t.Errorf("target ping not answered")
	}
	// Data-In beyond the task's buffer is a protocol error, not a write past it.
	tk := &s.tasks[0]
	tk.prepare(cdbRW(false, false, 0, 1), true, make([]byte, 512))
	s.register(tk)
	tk.gen = 1
	stream := pdu(opDataIn, func(h *bhs) { h[1] = 0; h.setU32(16, tk.itt); h.setU32(40, 256) }, make([]byte, 512))
	if _, err := run(stream); !errors.As(err, &pe) || !strings.Contains(err.Error(), "beyond the 512-byte buffer") {
		t.Errorf("Data-In overflow: %v", err)
	}
	if _, err := run(pdu(opLoginResp, nil, nil)); !errors.As(err, &pe) {
		t.Errorf("login response in full-feature phase: %v", err)
	}
}

// TestAbortEscalation checks the timeout path on a stand-in connection: ABORT TASK
// answered → the command is requeued; unanswered → LOGICAL UNIT RESET; that
// unanswered too → the connection is dropped (and the reconnect reissues).
func TestAbortEscalation(t *testing.T) {
	for _, c := range []struct {
		name    string
		answers map[byte]byte // TMF function → response; absent: no answer
		wantFns []byte
		dropped bool
	}{
		{"abort works", map[byte]byte{tmfAbortTask: 0}, []byte{tmfAbortTask}, false},
		{"task already gone", map[byte]byte{tmfAbortTask: 1}, []byte{tmfAbortTask}, false},
		{"reset works", map[byte]byte{tmfLogicalReset: 0}, []byte{tmfAbortTask, tmfLogicalReset}, false},
		{"nothing answers", nil, []byte{tmfAbortTask, tmfLogicalReset}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			// NopTimeout bounds the wait for each TMF answer; 50 ms was less than
			// a loaded machine may take to schedule the answering goroutine.
			cfg, _ := (&Config{Portals: []string{"x:1"}, TargetName: "t", QueueDepth: 2,
				NopTimeout: time.Second}).withDefaults()
			s := newSession(cfg)
			nc, peer := net.Pipe()
			defer peer.Close()
			fc := &conn{s: s, gen: 1, nc: nc, ctrl: make(chan ctrlReq, 8), tmfResp: make(chan byte, 1), dead: make(chan struct{})}
			tk := &s.tasks[0]
			tk.prepare(cdbRW(true, false, 0, 1), false, make([]byte, 512))
			s.register(tk)
			tk.gen = 1
			// The stand-in target answers until abort has returned, then takes
			// what abort left queued (it only sends on the buffered ctrl).
			stop, done := make(chan struct{}), make(chan struct{})
			var fns []byte
			requeued := false
			handle := func(q ctrlReq) {
				switch q.kind {
				case ctrlTMF:
					fns = append(fns, q.fn)
					if r, ok := c.answers[q.fn]; ok {
						fc.tmfResp <- r
					}
				case ctrlRequeue:
					requeued = q.t == tk
				}
			}
			go func() {
				defer close(done)
				for {
					select {
					case q := <-fc.ctrl:
						handle(q)
					case <-stop:
						for {
							select {
							case q := <-fc.ctrl:
								handle(q)
							default:
								return
							}
						}
					}
				}
			}()
			s.abort(fc, taskRef{tk, tk.seq})
			close(stop)
			<-done
			if !bytes.Equal(fns, c.wantFns) || requeued == c.dropped || fc.isDead() != c.dropped {
				t.Fatalf("TMFs %v, requeued %v, dropped %v", fns, requeued, fc.isDead())
			}
		})
	}
}

// The disk's description: standard INQUIRY fields, and the preferred designator of
// VPD page 0x83 (NAA before EUI-64 before T10, the longest of a kind, only the
// logical unit's), from the answers tgtd and gotgt give and from odd ones.
func TestInquiryParsing(t *testing.T) {
	std := make([]byte, 96)
	copy(std[8:], "IET     VIRTUAL-DISK    0001")
	var q Inquiry
	q.parseStandardInquiry(std)
	if q.Vendor != "IET" || q.Product != "VIRTUAL-DISK" || q.Revision != "0001" {
		t.Errorf("standard INQUIRY: %+v", q)
	}
	q = Inquiry{}
	q.parseStandardInquiry(std[:20]) // cut short in the product field
	if q.Vendor != "IET" || q.Product != "VIRT" || q.Revision != "" {
		t.Errorf("short INQUIRY: %+v", q)
	}
	unhex := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	desc := func(codeSet, assocType byte, body string) string {
		return string(append([]byte{codeSet, assocType, 0, byte(len(body))}, body...))
	}
	naa8 := desc(1, 0x03, "\x30\x00\x00\x00\x00\x00\x03\xe8")
	for _, c := range []struct {
		name, page, want string
	}{
		{"tgtd: T10, NAA 3, NAA 6", string(unhex("020100244945542020202020303030313030303100000000000000000000000000000000000000000103000830000001000000010103001060000000000000000e00000000010001")),
			"naa.60000000000000000e00000000010001"},
		{"gotgt: iSCSI name and ports, then NAA", string(unhex("5290002169716e2e323032362d30312e6f72672e6973626f6f742e746573743a676f7467745183000830000000000003e8519500040000000051940004000000015398002c69716e2e323032362d30312e6f72672e6973626f6f742e746573743a676f7467742c742c3078303100000000")),
			"naa.30000000000003e8"},
		{"EUI-64 beats T10", desc(2, 0x01, "VENDOR  disk-7") + desc(1, 0x02, "\x00\x11\x22\x33\x44\x55\x66\x77"), "eui.0011223344556677"},
		{"T10 alone, spaces kept inside", desc(2, 0x01, "IET     00010001  "), "t10.IET     00010001"},
		{"NAA of the target port ignored", desc(1, 0x13, "\x50\x01") + desc(2, 0x01, "X"), "t10.X"},
		{"truncated descriptor after a good one", naa8 + "\x01\x03\x00\x10\x60", "naa.30000000000003e8"},
		{"control characters", desc(2, 0x01, "A\nB\x7f"), "t10.A?B?"},
		{"empty page", "", ""},
	} {
		if got := designatorID([]byte(c.page)); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}
