package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
)

// Login stages (RFC 7143 §11.12.3).
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// loginResult is what a successful login leaves for the full-feature phase.
type loginResult struct {
	tsih      uint16
	expStatSN uint32
	expCmdSN  uint32
	maxCmdSN  uint32
	params    map[string]string // negotiated operational keys and declaratives
}

// loginConn drives one login on a fresh connection.
type loginConn struct {
	cfg       *Config
	nc        net.Conn
	r         pduReader
	w         pduWriter
	isid      [6]byte
	tsih      uint16
	cmdSN     uint32
	expStatSN uint32
	csg, nsg  byte
	buf       []byte
	params    map[string]string
}

// login runs the security and operational stages and returns the negotiated session
// parameters. Secrets never appear in its errors. A protocol violation is permanent
// (IsPermanent): a target that sends a malformed login response sends it again.
func login(nc net.Conn, cfg *Config, isid [6]byte, tsih uint16, cmdSN uint32) (*loginResult, error) {
	l := &loginConn{cfg: cfg, nc: nc, isid: isid, tsih: tsih, cmdSN: cmdSN,
		buf: make([]byte, 64<<10), params: map[string]string{}}
	l.r = pduReader{r: nc, maxData: len(l.buf)}
	l.w = pduWriter{w: nc}
	res, err := l.run()
	if pe := (*ProtocolError)(nil); errors.As(err, &pe) {
		err = permanentError{err}
	}
	return res, err
}

func (l *loginConn) run() (*loginResult, error) {
	resp, err := l.security()
	if err != nil {
		return nil, err
	}
	if resp.flags()&0x80 == 0 || resp.flags()&3 != stageFullFeature {
		if resp, err = l.operational(); err != nil {
			return nil, err
		}
	} else {
		// The target skipped the operational stage: every key keeps its default.
		for _, k := range []string{"HeaderDigest", "DataDigest"} {
			if l.required(k) {
				return nil, &NegotiationError{Key: k, Offered: l.offer(k)}
			}
		}
	}
	res := &loginResult{
		tsih:      binary.BigEndian.Uint16(resp[14:]),
		expStatSN: resp.statSN() + 1,
		expCmdSN:  resp.expCmdSN(),
		maxCmdSN:  resp.maxCmdSN(),
		params:    l.params,
	}
	// RFC 7143 requires a non-zero TSIH here; gotgt sends 0. Nothing we do depends
	// on it (reinstatement uses TSIH 0), so tolerate it.
	return res, nil
}

// exchange sends one login request and collects the full response text, following
// continuations (C bit) in either direction.
func (l *loginConn) exchange(transit bool, kvs []KV) (bhs, map[string]string, error) {
	var h bhs
	text := encodeText(kvs)
	var got []byte
	for {
		chunk := text
		cont := false
		if len(chunk) > 8192 { // default MaxRecvDataSegmentLength during login
			chunk, cont = chunk[:8192], true
		}
		text = text[len(chunk):]
		h.reset(opLoginReq | flagImmediate)
		flags := l.csg<<2 | l.nsg
		if cont {
			flags |= 0x40
		} else if transit {
			flags |= 0x80
		}
		h[1] = flags
		copy(h[8:14], l.isid[:])
		binary.BigEndian.PutUint16(h[14:], l.tsih)
		h.setU32(16, 1) // ITT
		h.setU32(24, l.cmdSN)
		h.setU32(28, l.expStatSN)
		if err := l.w.writePDU(&h, chunk); err != nil {
			return h, nil, err
		}
		if err := l.w.flush(); err != nil {
			return h, nil, err
		}
		if err := l.r.readHeader(); err != nil {
			return h, nil, err
		}
		resp := l.r.hdr
		if resp.opcode() == opReject {
			return resp, nil, protoErr("target rejected a login request (reason 0x%02x)", resp[2])
		}
		if resp.opcode() != opLoginResp {
			return resp, nil, protoErr("got %s during login", opName(resp.opcode()))
		}
		n := resp.dataLen()
		if len(got)+n > 64<<10 {
			return resp, nil, protoErr("login response text over 64 KiB")
		}
		if err := l.r.readData(l.buf[:n]); err != nil {
			return resp, nil, err
		}
		got = append(got, l.buf[:n]...)
		l.expStatSN = resp.statSN() + 1
		if class, detail := resp[36], resp[37]; class != 0 {
			kv, _ := parseText(got)
			return resp, nil, l.statusError(class, detail, kv)
		}
		if resp[3] != 0 {
			return resp, nil, protoErr("target chose iSCSI version %d", resp[3])
		}
		if cont || len(text) > 0 {
			continue
		}
		if resp.flags()&0x40 != 0 {
			// Target continues its text: ask for the rest with an empty request.
			transit = false
			kvs = nil
			continue
		}
		if csg := resp.flags() >> 2 & 3; csg != l.csg {
			return resp, nil, protoErr("login response in stage %d, want %d", csg, l.csg)
		}
		kv, err := parseText(got)
		if err != nil {
			return resp, nil, err
		}
		m := make(map[string]string, len(kv))
		for _, p := range kv {
			m[p.Key] = p.Value
		}
		return resp, m, nil
	}
}

func (l *loginConn) statusError(class, detail byte, kv []KV) error {
	if class == 1 {
		for _, p := range kv {
			if p.Key == "TargetAddress" {
				addr := p.Value
				if i := strings.LastIndexByte(addr, ','); i >= 0 {
					addr = addr[:i] // drop the portal group tag
				}
				if _, _, err := net.SplitHostPort(addr); err != nil {
					addr = net.JoinHostPort(strings.Trim(addr, "[]"), "3260")
				}
				return &redirectError{addr: addr, permanent: detail == 2}
			}
		}
		return protoErr("redirect without TargetAddress")
	}
	return &LoginError{Class: class, Detail: detail, Target: l.cfg.TargetName}
}

// transited reports whether the target moved to the next stage.
func transited(resp bhs) bool { return resp.flags()&0x80 != 0 }

// security runs the security stage: names, AuthMethod and CHAP.
func (l *loginConn) security() (bhs, error) {
	cfg := l.cfg
	l.csg, l.nsg = stageSecurity, stageOperational
	kvs := []KV{
		{"InitiatorName", cfg.InitiatorName},
		{"SessionType", "Normal"},
		{"TargetName", cfg.TargetName},
	}
	if cfg.CHAPUser == "" {
		kvs = append(kvs, KV{"AuthMethod", "None"})
		resp, m, err := l.exchange(true, kvs)
		if err != nil {
			return resp, err
		}
		l.declaratives(m)
		if m["AuthMethod"] != "" && m["AuthMethod"] != "None" {
			return resp, fmt.Errorf("iscsi: target %s requires AuthMethod=%s, but no CHAP credentials are configured", cfg.TargetName, m["AuthMethod"])
		}
		return l.finishStage(resp)
	}
	kvs = append(kvs, KV{"AuthMethod", "CHAP,None"})
	resp, m, err := l.exchange(false, kvs)
	if err != nil {
		return resp, err
	}
	l.declaratives(m)
	switch m["AuthMethod"] {
	case "None":
		if cfg.RevCHAPUser != "" {
			return resp, fmt.Errorf("iscsi: target %s skipped authentication, but mutual CHAP is configured", cfg.TargetName)
		}
		resp, _, err = l.exchange(true, nil)
		if err != nil {
			return resp, err
		}
		return l.finishStage(resp)
	case "CHAP":
	default:
		return resp, fmt.Errorf("iscsi: target chose AuthMethod=%q, not among CHAP,None", m["AuthMethod"])
	}
	l.params["AuthMethod"] = "CHAP"
	_, m, err = l.exchange(false, []KV{{"CHAP_A", chapOffer}})
	if err != nil {
		return resp, err
	}
	var chap chapState
	answer, err := chap.respond(cfg, m, chapOffer)
	if err != nil {
		return resp, err
	}
	l.params["CHAP_A"] = strconv.Itoa(chap.alg)
	resp, m, err = l.exchange(true, answer)
	if err != nil {
		return resp, err
	}
	if cfg.RevCHAPUser != "" {
		if err := chap.verifyTarget(cfg, m); err != nil {
			// The same target answers the same way next time: a wrong reverse
			// secret (or an impostor) is said at once, not retried until a timeout.
			return resp, permanentError{err}
		}
	}
	return l.finishStage(resp)
}

// finishStage keeps asking to transit until the target agrees.
func (l *loginConn) finishStage(resp bhs) (bhs, error) {
	for i := 0; !transited(resp); i++ {
		if i == 8 {
			return resp, protoErr("target does not leave login stage %d", l.csg)
		}
		var err error
		var m map[string]string
		if resp, m, err = l.exchange(true, nil); err != nil {
			return resp, err
		}
		l.declaratives(m)
	}
	return resp, nil
}

func (l *loginConn) declaratives(m map[string]string) {
	for _, k := range []string{"TargetAlias", "TargetPortalGroupTag", "TargetAddress"} {
		if v, ok := m[k]; ok {
			l.params[k] = v
		}
	}
}

// offers are our operational keys, in the order we send them.
func (l *loginConn) offers() []KV {
	return []KV{
		{"HeaderDigest", l.cfg.HeaderDigest.offer()},
		{"DataDigest", l.cfg.DataDigest.offer()},
		{"MaxConnections", "1"},
		{"InitialR2T", "No"},
		{"ImmediateData", "Yes"},
		{"MaxRecvDataSegmentLength", strconv.Itoa(l.cfg.MaxRecvDataSegmentLength)},
		{"MaxBurstLength", "16776192"},
		{"FirstBurstLength", "262144"},
		{"DefaultTime2Wait", "0"},
		{"DefaultTime2Retain", "0"},
		{"MaxOutstandingR2T", "16"},
		{"DataPDUInOrder", "Yes"},
		{"DataSequenceInOrder", "Yes"},
		{"ErrorRecoveryLevel", "0"},
	}
}

// rfcDefaults are the values in force for keys the target never answers (RFC 7143 §13).
var rfcDefaults = map[string]string{
	"HeaderDigest": "None", "DataDigest": "None", "MaxConnections": "1",
	"InitialR2T": "Yes", "ImmediateData": "Yes", "MaxRecvDataSegmentLength": "8192",
	"MaxBurstLength": "262144", "FirstBurstLength": "65536", "DefaultTime2Wait": "2",
	"DefaultTime2Retain": "20", "MaxOutstandingR2T": "1", "DataPDUInOrder": "Yes",
	"DataSequenceInOrder": "Yes", "ErrorRecoveryLevel": "0",
}

// operational negotiates the session keys and moves to the full-feature phase.
func (l *loginConn) operational() (bhs, error) {
	l.csg, l.nsg = stageOperational, stageFullFeature
	offers := l.offers()
	ours := map[string]string{}
	for _, kv := range offers {
		ours[kv.Key] = kv.Value
	}
	negotiated := map[string]string{}
	theirs := map[string]string{} // what the target said for each key, for errors
	send := offers
	var resp bhs
	for round := 0; ; round++ {
		if round == 16 {
			return resp, protoErr("operational negotiation does not converge")
		}
		var m map[string]string
		var err error
		resp, m, err = l.exchange(true, send)
		if err != nil {
			return resp, err
		}
		l.declaratives(m)
		send = nil
		// In a fixed order, so that of several bad answers the same one is reported.
		for _, k := range slices.Sorted(maps.Keys(m)) {
			v := m[k]
			if _, done := negotiated[k]; done {
				continue
			}
			theirs[k] = v
			switch {
			case k == "MaxRecvDataSegmentLength":
				// Declarative: the most the target accepts from us.
				if _, err := negotiate(k, "", v); err != nil {
					return resp, err
				}
				negotiated["TargetMaxRecvDataSegmentLength"] = v
			case ours[k] != "" && offered(offers, k):
				r, err := negotiate(k, ours[k], v)
				if err != nil {
					return resp, err
				}
				negotiated[k] = r
			case keyRules[k] != (keyRule{}):
				a := answer(k, v, ours[k])
				if a == "Reject" && l.required(k) {
					return resp, &NegotiationError{Key: k, Offered: ours[k], Answered: v}
				}
				negotiated[k] = a
				send = append(send, KV{k, a})
			case k == "TargetAlias" || k == "TargetPortalGroupTag" || k == "TargetAddress":
			default:
				send = append(send, KV{k, "NotUnderstood"})
			}
		}
		if transited(resp) && resp.flags()&3 == stageFullFeature && len(send) == 0 {
			break
		}
	}
	// A required digest the target left unanswered would default to None.
	for _, k := range []string{"HeaderDigest", "DataDigest"} {
		if l.required(k) && negotiated[k] != ours[k] {
			return resp, &NegotiationError{Key: k, Offered: ours[k], Answered: theirs[k]}
		}
	}
	for k, v := range rfcDefaults {
		if _, ok := negotiated[k]; !ok {
			negotiated[k] = v
		}
	}
	if _, ok := negotiated["TargetMaxRecvDataSegmentLength"]; !ok {
		negotiated["TargetMaxRecvDataSegmentLength"] = "8192"
	}
	negotiated["MaxRecvDataSegmentLength"] = ours["MaxRecvDataSegmentLength"]
	for k, v := range negotiated {
		l.params[k] = v
	}
	return resp, nil
}

// offer is our offer for key k.
func (l *loginConn) offer(k string) string {
	for _, kv := range l.offers() {
		if kv.Key == k {
			return kv.Value
		}
	}
	return ""
}

// required reports whether key k is a digest the configuration requires.
func (l *loginConn) required(k string) bool {
	switch k {
	case "HeaderDigest":
		return l.cfg.HeaderDigest.Required()
	case "DataDigest":
		return l.cfg.DataDigest.Required()
	}
	return false
}

func offered(kvs []KV, k string) bool {
	for _, kv := range kvs {
		if kv.Key == k {
			return true
		}
	}
	return false
}
