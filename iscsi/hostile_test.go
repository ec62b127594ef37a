package iscsi

// Hostile-target tests: an in-process fake target that logs in correctly and
// then lies — oversized data segments, bad header and data digests, sequence
// numbers out of window, a reflected CHAP challenge. The initiator must end
// with one clear error (or carry on, where RFC 7143 says to ignore the lie),
// never panic, and never let the target size its allocations.

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fault is what the fake target does wrong.
type fault int

const (
	faultNone            fault = iota
	faultLoginOversize         // a login response claiming a 16 MiB text
	faultDataInOversize        // a Data-In claiming a 16 MiB segment, far over MaxRecvDataSegmentLength
	faultBadHeaderDigest       // SCSI Responses with a wrong header CRC32C
	faultBadDataDigest         // Data-In with a wrong data CRC32C
	faultStatSNJump            // StatSN jumps by 1000 on every response
	faultWindowInvalid         // MaxCmdSN < ExpCmdSN-1 on every response (must be ignored)
	faultWindowClosed          // MaxCmdSN = ExpCmdSN-1 forever: the window never opens
	faultReflectCHAP           // mutual CHAP: echo the initiator's last challenge back as ours
	// Login faults: the first five are permanent, the last two may heal.
	faultDigestNone       // answer HeaderDigest=None and DataDigest=None whatever was offered
	faultDigestReject     // answer Reject to the digests
	faultDigestIrrelevant // answer Irrelevant to the digests
	faultDigestSilent     // never answer the digest keys
	faultLoginGarbage     // an operational-stage response whose text is no key=value
	faultLoginVersion     // a login response with Version-active 5
	faultLoginBusy        // status 0x0301, service unavailable, on every login
	faultLoginNoResources // status 0x0302, out of resources, on every login
)

const (
	hostileIQN   = "iqn.2026-01.org.isboot.test:hostile"
	hostileBlock = 512
	hostileSize  = 1 << 20
)

// hostileTarget is a minimal iSCSI target on 127.0.0.1 with one fault.
type hostileTarget struct {
	t      *testing.T
	l      net.Listener
	fault  fault
	digest bool // negotiate CRC32C header and data digests

	conns atomic.Int32
	wg    sync.WaitGroup

	mu sync.Mutex
	// CHAP reflection: what the initiator sent on each connection.
	lastID        string
	lastChallenge []byte
	reflected     []chapSeen
	// luns: every distinct LUN field of the SCSI commands received, in order.
	luns []LUNAddr
}

// chapSeen is one connection's CHAP exchange as the attacker saw it.
type chapSeen struct {
	sentID         string // the challenge id/value the fake sent (reflected)
	sentChallenge  []byte
	gotResponse    []byte // the initiator's CHAP_R to it
	gotChallenge   []byte // the initiator's own CHAP_C on the same connection
	gotChallengeID string
}

func startHostile(t *testing.T, f fault, digest bool) *hostileTarget {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &hostileTarget{t: t, l: l, fault: f, digest: digest}
	serveConns(l, &h.wg, func(nc net.Conn) {
		h.conns.Add(1)
		nc.SetDeadline(time.Now().Add(60 * time.Second))
		h.serve(nc)
	})
	t.Cleanup(func() { l.Close(); h.wg.Wait() })
	return h
}

func (h *hostileTarget) addr() string { return h.l.Addr().String() }

// hconn is the target side of one connection.
type hconn struct {
	h                   *hostileTarget
	nc                  net.Conn
	r                   pduReader
	buf                 []byte
	statSN, expCmdSN    uint32
	hdrDigest, dataDigs bool
	tsih                uint16
}

func (h *hostileTarget) serve(nc net.Conn) {
	c := &hconn{h: h, nc: nc, buf: make([]byte, 1<<20), tsih: 7}
	c.r = pduReader{r: nc, maxData: len(c.buf)}
	if !c.login() {
		return
	}
	c.hdrDigest, c.dataDigs = h.digest, h.digest
	c.r.hdrDigest, c.r.dataDigest = h.digest, h.digest
	for {
		req, data, ok := c.next()
		if !ok {
			return
		}
		switch req.opcode() {
		case opSCSICmd:
			if !c.scsi(&req, data) {
				return
			}
		case opNOPOut:
			if req.itt() != reservedTag {
				var r bhs
				r.reset(opNOPIn)
				r[1] = flagFinal
				copy(r[8:16], req[8:16])
				r.setU32(16, req.itt())
				r.setU32(20, reservedTag)
				if !c.send(&r, nil, true) {
					return
				}
			}
		case opTMFReq:
			var r bhs
			r.reset(opTMFResp)
			r[1] = flagFinal
			r.setU32(16, req.itt())
			if !c.send(&r, nil, true) {
				return
			}
		case opLogoutReq:
			var r bhs
			r.reset(opLogoutResp)
			r[1] = flagFinal
			r.setU32(16, req.itt())
			c.send(&r, nil, true)
			return
		default:
			return
		}
	}
}

// send writes one target PDU with this connection's sequence numbers, the
// fault's lies and digests. status: the PDU carries (and advances) StatSN.
func (c *hconn) send(r *bhs, data []byte, status bool) bool {
	f := c.h.fault
	stat := c.statSN
	if status {
		c.statSN++
	}
	if f == faultStatSNJump {
		stat += 1000
	}
	exp, maxSN := c.expCmdSN, c.expCmdSN+32
	switch f {
	case faultWindowInvalid:
		maxSN = exp - 5
	case faultWindowClosed:
		maxSN = exp - 1
	}
	r.setU32(24, stat)
	r.setU32(28, exp)
	r.setU32(32, maxSN)
	r.setDataLen(len(data))
	if f == faultDataInOversize && r.opcode() == opDataIn {
		r.setDataLen(0xffffff)
	}
	var out []byte
	out = append(out, r[:]...)
	if c.hdrDigest {
		sum := crc32c(r[:])
		if f == faultBadHeaderDigest && r.opcode() == opSCSIResp {
			sum ^= 0x5a5a
		}
		out = binary.LittleEndian.AppendUint32(out, sum)
	}
	if len(data) > 0 {
		out = append(out, data...)
		out = append(out, zeroPad[:padLen(len(data))]...)
		if c.dataDigs {
			sum := crc32c(out[len(out)-len(data)-padLen(len(data)):])
			if f == faultBadDataDigest && r.opcode() == opDataIn {
				sum ^= 1
			}
			out = binary.LittleEndian.AppendUint32(out, sum)
		}
	}
	_, err := c.nc.Write(out)
	return err == nil
}

// login answers the initiator's login (AuthMethod None, or mutual CHAP with
// the reflection fault) and agrees to its operational offers.
func (c *hconn) login() bool {
	h := c.h
	var seen chapSeen
	for {
		if err := c.r.readHeader(); err != nil {
			return false
		}
		req := c.r.hdr
		if req.opcode() != opLoginReq {
			return false
		}
		n := req.dataLen()
		if err := c.r.readData(c.buf[:n]); err != nil {
			return false
		}
		kvs, err := parseText(c.buf[:n])
		if err != nil {
			return false
		}
		got := map[string]string{}
		for _, kv := range kvs {
			got[kv.Key] = kv.Value
		}
		c.expCmdSN = req.u32(24)
		csg, nsg, transit := req.flags()>>2&3, req.flags()&3, req.flags()&flagFinal != 0
		var answer []KV
		switch {
		case csg == stageSecurity && got["AuthMethod"] != "":
			method := "None"
			if strings.Contains(got["AuthMethod"], "CHAP") && h.fault == faultReflectCHAP {
				method, transit = "CHAP", false
			}
			answer = []KV{{"AuthMethod", method}, {"TargetPortalGroupTag", "1"}}
		case csg == stageSecurity && got["CHAP_A"] != "":
			// The attack: our "challenge" is the one the initiator sent last time.
			h.mu.Lock()
			id, ch := h.lastID, h.lastChallenge
			h.mu.Unlock()
			if ch == nil { // first connection: a fresh challenge
				id, ch = "1", bytes.Repeat([]byte{0xab}, 16)
			}
			seen.sentID, seen.sentChallenge = id, ch
			answer = []KV{{"CHAP_A", "5"}, {"CHAP_I", id}, {"CHAP_C", encodeHex(ch)}}
		case csg == stageSecurity && got["CHAP_R"] != "":
			seen.gotResponse, _ = decodeBinary("CHAP_R", got["CHAP_R"])
			seen.gotChallenge, _ = decodeBinary("CHAP_C", got["CHAP_C"])
			seen.gotChallengeID = got["CHAP_I"]
			h.mu.Lock()
			h.lastID, h.lastChallenge = got["CHAP_I"], seen.gotChallenge
			h.reflected = append(h.reflected, seen)
			h.mu.Unlock()
			// Answer the initiator's challenge with its own answer to ours:
			// only valid if it computed our answer for us.
			answer = []KV{{"CHAP_N", "target"}, {"CHAP_R", got["CHAP_R"]}}
		case csg == stageOperational:
			for _, kv := range kvs {
				v := kv.Value
				switch kv.Key {
				case "HeaderDigest", "DataDigest":
					v = "None"
					if h.digest {
						v = "CRC32C"
					}
					switch {
					case kv.Value != "CRC32C":
						// The digest faults refuse only a required CRC32C.
					case h.fault == faultDigestNone:
						v = "None"
					case h.fault == faultDigestReject:
						v = "Reject"
					case h.fault == faultDigestIrrelevant:
						v = "Irrelevant"
					case h.fault == faultDigestSilent:
						continue
					}
				case "MaxRecvDataSegmentLength":
					v = "262144"
				}
				answer = append(answer, KV{kv.Key, v})
			}
		}
		var r bhs
		r.reset(opLoginResp)
		flags := csg << 2
		if transit {
			flags |= flagFinal | nsg
		}
		r[1] = flags
		copy(r[8:14], req[8:14])
		if transit && nsg == stageFullFeature {
			binary.BigEndian.PutUint16(r[14:], c.tsih)
		}
		r.setU32(16, req.itt())
		text := encodeText(answer)
		switch {
		case h.fault == faultLoginGarbage && csg == stageOperational:
			text = []byte("MaxBurstLength\x00")
		case h.fault == faultLoginVersion:
			r[3] = 5
		case h.fault == faultLoginBusy, h.fault == faultLoginNoResources:
			r[1] = csg << 2
			r[36], r[37] = 3, 1
			if h.fault == faultLoginNoResources {
				r[37] = 2
			}
			c.send(&r, nil, true)
			return false
		}
		if h.fault == faultLoginOversize {
			r.setU32(24, c.statSN)
			r.setDataLen(0xffffff)
			c.nc.Write(r[:])
			return false
		}
		if !c.send(&r, text, true) {
			return false
		}
		if transit && nsg == stageFullFeature {
			return true
		}
	}
}

// scsi answers the commands the initiator sends while opening the LUN, and
// reads (zeros). Writes are acknowledged.
func (c *hconn) scsi(req *bhs, immediate []byte) bool {
	c.expCmdSN = req.u32(24) + 1
	c.h.mu.Lock()
	if lun := LUNAddr(req[8:16]); !slices.Contains(c.h.luns, lun) {
		c.h.luns = append(c.h.luns, lun)
	}
	c.h.mu.Unlock()
	cdb := req[32:48]
	itt := req.itt()
	alloc := int(req.u32(20))
	var data []byte
	status := byte(statusGood)
	switch cdb[0] {
	case 0x00: // TEST UNIT READY
	case 0x12: // INQUIRY
		switch {
		case cdb[1]&1 == 0:
			data = make([]byte, 96)
			data[2], data[3], data[4] = 6, 2, 91
			copy(data[8:], "ISBOOT  HOSTILE         0001")
		case cdb[2] == 0x80:
			data = append([]byte{0, 0x80, 0, 8}, "HOSTILE1"...)
		case cdb[2] == 0x83:
			data = append([]byte{0, 0x83, 0, 12, 2, 1, 0, 8}, "HOSTILE1"...)
		default:
			status = statusCheckCondition
		}
	case 0x9e: // READ CAPACITY(16)
		data = make([]byte, 32)
		binary.BigEndian.PutUint64(data, hostileSize/hostileBlock-1)
		binary.BigEndian.PutUint32(data[8:], hostileBlock)
	case 0x25: // READ CAPACITY(10)
		data = make([]byte, 8)
		binary.BigEndian.PutUint32(data, hostileSize/hostileBlock-1)
		binary.BigEndian.PutUint32(data[4:], hostileBlock)
	case 0x1a: // MODE SENSE(6)
		data = make([]byte, 4)
		data[0] = 3
	case 0x28, 0x88: // READ
		data = make([]byte, alloc)
	case 0x2a, 0x8a, 0x35: // WRITE, SYNCHRONIZE CACHE
	default:
		status = statusCheckCondition
	}
	if len(data) > alloc {
		data = data[:alloc]
	}
	var r bhs
	if status == statusGood && len(data) > 0 {
		r.reset(opDataIn)
		r[1] = flagFinal | 0x01 // F and S: status with the data
		r.setU32(16, itt)
		r.setU32(20, reservedTag)
		return c.send(&r, data, true)
	}
	r.reset(opSCSIResp)
	r[1] = flagFinal
	r[3] = status
	r.setU32(16, itt)
	var sense []byte
	if status == statusCheckCondition {
		sense = make([]byte, 2+18)
		binary.BigEndian.PutUint16(sense, 18)
		sense[2], sense[4], sense[9], sense[14] = 0x70, senseIllegalRequest, 10, 0x24
	}
	return c.send(&r, sense, true)
}

// hostileDial dials the fake with a bounded retry policy and short timers.
func hostileDial(t *testing.T, h *hostileTarget, mutate func(*Config)) (*Session, error, time.Duration) {
	t.Helper()
	cfg := Config{
		Portals:        []string{h.addr()},
		TargetName:     hostileIQN,
		LUN:            0,
		HeaderDigest:   digestIf(h.digest),
		DataDigest:     digestIf(h.digest),
		Retry:          RetryPolicy{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond},
		NopInterval:    time.Second,
		NopTimeout:     2 * time.Second,
		CommandTimeout: 3 * time.Second,
		LoginTimeout:   3 * time.Second,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t0 := time.Now()
	s, err := Dial(ctx, cfg)
	return s, err, time.Since(t0)
}

func digestIf(on bool) Digest {
	if on {
		return DigestCRC32C
	}
	return DigestAuto
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func TestHostileTarget(t *testing.T) {
	cases := []struct {
		name    string
		fault   fault
		digest  bool
		wantErr string // "" : the session must work (the lie is one RFC 7143 says to ignore)
	}{
		{"control: honest fake target", faultNone, true, ""},
		{"oversized login response", faultLoginOversize, false, "Login Response: data segment 16777215 bytes exceeds MaxRecvDataSegmentLength"},
		{"oversized Data-In segment", faultDataInOversize, false, "Data-In: data segment 16777215 bytes exceeds MaxRecvDataSegmentLength 262144"},
		{"bad header digest", faultBadHeaderDigest, true, "digest mismatch: header of SCSI Response"},
		{"bad data digest", faultBadDataDigest, true, "digest mismatch: data of Data-In"},
		{"StatSN jumps", faultStatSNJump, false, ""},
		{"MaxCmdSN below ExpCmdSN-1 (ignored)", faultWindowInvalid, false, ""},
		{"command window never opens", faultWindowClosed, false, "window"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			goroutines := runtime.NumGoroutine()
			before := heapInUse()
			h := startHostile(t, c.fault, c.digest)
			s, err, took := hostileDial(t, h, nil)
			if err == nil {
				want := Inquiry{Vendor: "ISBOOT", Product: "HOSTILE", Revision: "0001", Serial: "HOSTILE1", ID: "t10.HOSTILE1", BlockSize: hostileBlock}
				if got := s.LUN().Inquiry(); got != want {
					t.Errorf("Inquiry %+v, want %+v", got, want)
				}
				buf := make([]byte, 8*hostileBlock)
				_, err = s.LUN().ReadAt(buf, 4096)
				s.Close()
			}
			grew := int64(heapInUse()) - int64(before)
			t.Logf("after %v and %d connections: err=%v; heap grew %d KiB", took.Round(time.Millisecond), h.conns.Load(), err, grew>>10)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("the session failed on a lie it should ignore: %v", err)
			case c.wantErr != "" && err == nil:
				t.Fatalf("the initiator accepted the fault (want an error with %q)", c.wantErr)
			case c.wantErr != "" && !strings.Contains(err.Error(), c.wantErr):
				t.Errorf("error %q does not say %q", err, c.wantErr)
			}
			if c.wantErr != "" && strings.Count(err.Error(), "\n") > 0 {
				t.Errorf("error is not one line: %q", err)
			}
			if grew > 8<<20 {
				t.Errorf("heap grew by %d MiB: the target sized an allocation", grew>>20)
			}
			if c.wantErr != "" && h.conns.Load() > 4 {
				t.Errorf("%d connections with MaxAttempts 3", h.conns.Load())
			}
			// Nothing left running once the session is gone.
			deadline := time.Now().Add(5 * time.Second)
			for runtime.NumGoroutine() > goroutines+3 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if n := runtime.NumGoroutine(); n > goroutines+3 {
				t.Errorf("%d goroutines left behind", n-goroutines)
			}
		})
	}
}

// TestHostileReflectedCHAP: during mutual CHAP the fake target echoes the
// challenge the initiator sent on the previous connection as its own. The
// initiator's answer must be useless to it (the directions use different
// secrets), the initiator must never send the challenge it was given, and
// the login must fail with a clear mutual-CHAP error, secrets unmentioned.
func TestHostileReflectedCHAP(t *testing.T) {
	const secret, revSecret = "initiator-secret-1", "target-secret-222"
	h := startHostile(t, faultReflectCHAP, false)
	// A failed mutual check is permanent, so each Dial makes one connection; the
	// fake reflects one connection's challenge on the next, which the session's
	// endless reconnects would also offer it. Three Dials give it two chances.
	for range 3 {
		conns := h.conns.Load()
		_, err, took := hostileDial(t, h, func(c *Config) {
			c.CHAPUser, c.CHAPSecret = "isboot", secret
			c.RevCHAPUser, c.RevCHAPSecret = "target", revSecret
		})
		t.Logf("after %v and %d connections: %v", took.Round(time.Millisecond), h.conns.Load()-conns, err)
		if err == nil {
			t.Fatal("login succeeded against a target that only reflects challenges")
		}
		if !strings.Contains(err.Error(), "mutual CHAP: target failed to authenticate") {
			t.Errorf("error %q does not say the target failed mutual CHAP", err)
		}
		if !IsPermanent(err) || h.conns.Load()-conns != 1 {
			t.Errorf("a target failing mutual CHAP was retried (%d connections, permanent %v)", h.conns.Load()-conns, IsPermanent(err))
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), revSecret) {
			t.Errorf("a secret is in the error")
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.reflected) < 2 {
		t.Fatalf("only %d CHAP exchanges: the reflection never happened", len(h.reflected))
	}
	for i, s := range h.reflected {
		if bytes.Equal(s.gotChallenge, s.sentChallenge) {
			t.Errorf("connection %d: the initiator sent back the challenge it was given", i)
		}
		if i == 0 {
			continue
		}
		// What the attacker needed on connection i-1 was the answer to the
		// initiator's challenge there, under the target's secret.
		prev := h.reflected[i-1]
		id, _ := parseNumber("CHAP_I", prev.gotChallengeID)
		needed := chapResponse(5, byte(id), revSecret, prev.gotChallenge)
		if bytes.Equal(s.gotResponse, needed) {
			t.Errorf("connection %d: the initiator computed the target's answer for it", i)
		}
		if !bytes.Equal(s.sentChallenge, prev.gotChallenge) {
			t.Errorf("connection %d: the fake did not reflect the previous challenge", i)
		}
	}
}

// TestHostileLoginPermanent: a login the target refuses for good (a required digest
// answered None, Reject, Irrelevant or nothing; a malformed login response) ends Dial
// at the first connection, within seconds, with one line naming the problem, even
// under the policy that retries forever.
func TestHostileLoginPermanent(t *testing.T) {
	cases := []struct {
		name  string
		fault fault
		want  string
	}{
		{"digest answered None", faultDigestNone, "iscsi: target refused HeaderDigest=CRC32C (answered None)"},
		{"digest rejected", faultDigestReject, "iscsi: target refused HeaderDigest=CRC32C (answered Reject)"},
		{"digest irrelevant", faultDigestIrrelevant, "iscsi: target refused HeaderDigest=CRC32C (answered Irrelevant)"},
		{"digest unanswered", faultDigestSilent, "iscsi: target refused HeaderDigest=CRC32C (no answer)"},
		{"login text without '='", faultLoginGarbage, "iscsi: protocol error: text key without value"},
		{"unknown iSCSI version", faultLoginVersion, "iscsi: protocol error: target chose iSCSI version 5"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := startHostile(t, c.fault, false)
			_, err, took := hostileDial(t, h, func(cfg *Config) {
				cfg.HeaderDigest = DigestCRC32C
				cfg.Retry = RetryPolicy{} // forever: only permanence ends it
			})
			t.Logf("failed after %v and %d connection(s): %v", took.Round(time.Millisecond), h.conns.Load(), err)
			if err == nil || err.Error() != c.want && !strings.HasPrefix(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			if !IsPermanent(err) {
				t.Errorf("IsPermanent(%v) = false", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			if n := h.conns.Load(); n != 1 {
				t.Errorf("%d connections: a permanent refusal was retried", n)
			}
			if took > 3*time.Second {
				t.Errorf("took %v to fail", took)
			}
		})
	}
}

// TestHostileLoginBusy: a target busy or out of resources (status 0x0301, 0x0302)
// may recover, so the login is retried until the policy or the context ends.
func TestHostileLoginBusy(t *testing.T) {
	for _, c := range []struct {
		fault fault
		want  string
	}{{faultLoginBusy, "service unavailable (status 0x0301)"}, {faultLoginNoResources, "out of resources (status 0x0302)"}} {
		t.Run(c.want, func(t *testing.T) {
			h := startHostile(t, c.fault, false)
			_, err, took := hostileDial(t, h, func(cfg *Config) {
				cfg.Retry = RetryPolicy{MaxAttempts: 5, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}
			})
			t.Logf("after %v and %d connections: %v", took.Round(time.Millisecond), h.conns.Load(), err)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "giving up after 5 attempts") {
				t.Fatalf("error %v, want %q after 5 attempts", err, c.want)
			}
			if IsPermanent(err) {
				t.Errorf("IsPermanent(%v) = true", err)
			}
			if n := h.conns.Load(); n != 5 {
				t.Errorf("%d connections, want 5 (one per attempt)", n)
			}
		})
	}
}
