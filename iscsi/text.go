package iscsi

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// KV is one text key=value pair (RFC 7143 §6). Order matters on the wire.
type KV struct{ Key, Value string }

const (
	maxKeyLen   = 63
	maxValueLen = 8192 // RFC 7143 §6.1: values up to 8192 bytes (CHAP uses most)
)

// parseText splits a text data segment ("key=value\0key=value\0") into pairs.
// It never trusts the peer: every pair must be well formed and bounded.
func parseText(b []byte) ([]KV, error) {
	var kvs []KV
	for len(b) > 0 {
		i := bytes.IndexByte(b, 0)
		var pair []byte
		if i < 0 {
			// RFC 7143 §6.1: every pair ends in NUL; accept a missing final NUL
			// only when nothing follows (some targets omit it).
			pair, b = b, nil
		} else {
			pair, b = b[:i], b[i+1:]
		}
		if len(pair) == 0 {
			// Padding NULs at the end of a segment.
			continue
		}
		eq := bytes.IndexByte(pair, '=')
		if eq <= 0 {
			return nil, protoErr("text key without value: %q", trunc(pair))
		}
		key, val := pair[:eq], pair[eq+1:]
		if len(key) > maxKeyLen {
			return nil, protoErr("text key longer than %d bytes: %q", maxKeyLen, trunc(key))
		}
		if len(val) > maxValueLen {
			return nil, protoErr("value of %s longer than %d bytes", key, maxValueLen)
		}
		for _, c := range key {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '+' || c == '@' || c == '_') {
				return nil, protoErr("bad character in text key %q", trunc(key))
			}
		}
		kvs = append(kvs, KV{string(key), string(val)})
	}
	return kvs, nil
}

func trunc(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}

// encodeText renders pairs as a text data segment.
func encodeText(kvs []KV) []byte {
	var b []byte
	for _, kv := range kvs {
		b = append(b, kv.Key...)
		b = append(b, '=')
		b = append(b, kv.Value...)
		b = append(b, 0)
	}
	return b
}

// parseNumber reads a numerical value: decimal, or hex with 0x (RFC 7143 §6.1).
func parseNumber(key, v string) (uint64, error) {
	var n uint64
	var err error
	if strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X") {
		n, err = strconv.ParseUint(v[2:], 16, 64)
	} else {
		n, err = strconv.ParseUint(v, 10, 64)
	}
	if err != nil {
		return 0, fmt.Errorf("iscsi: %s=%q is not a number", key, v)
	}
	return n, nil
}

// keyKind says how a key is negotiated (RFC 7143 §6.2, §13).
type keyKind int

const (
	kindDeclarative keyKind = iota
	kindList
	kindAnd // boolean, result is AND of both sides
	kindOr  // boolean, result is OR of both sides
	kindMin // numerical, result is the smaller
	kindMax // numerical, result is the larger
)

// keyRule is how one operational key negotiates and which values are legal.
type keyRule struct {
	kind   keyKind
	lo, hi uint64
}

var keyRules = map[string]keyRule{
	"HeaderDigest":             {kind: kindList},
	"DataDigest":               {kind: kindList},
	"MaxConnections":           {kindMin, 1, 65535},
	"InitialR2T":               {kind: kindOr},
	"ImmediateData":            {kind: kindAnd},
	"MaxRecvDataSegmentLength": {kindDeclarative, 512, 1<<24 - 1},
	"MaxBurstLength":           {kindMin, 512, 1<<24 - 1},
	"FirstBurstLength":         {kindMin, 512, 1<<24 - 1},
	"DefaultTime2Wait":         {kindMax, 0, 3600},
	"DefaultTime2Retain":       {kindMin, 0, 3600},
	"MaxOutstandingR2T":        {kindMin, 1, 65535},
	"DataPDUInOrder":           {kind: kindOr},
	"DataSequenceInOrder":      {kind: kindOr},
	"ErrorRecoveryLevel":       {kindMin, 0, 2},
}

// negotiate computes the outcome of key k when we offered ours and the target
// answered theirs. It returns the value both sides now use, or an error when the
// answer is not one the rules allow: a NegotiationError when the target refuses
// (Reject, Irrelevant, NotUnderstood, or a list value we did not offer, such as None
// to a required CRC32C), a ProtocolError when the answer is malformed.
func negotiate(k, ours, theirs string) (string, error) {
	rule, ok := keyRules[k]
	if !ok {
		return theirs, nil
	}
	switch theirs {
	case "Reject", "Irrelevant", "NotUnderstood":
		return "", &NegotiationError{Key: k, Offered: ours, Answered: theirs}
	}
	switch rule.kind {
	case kindList:
		for _, v := range strings.Split(ours, ",") {
			if v == theirs {
				return theirs, nil
			}
		}
		return "", &NegotiationError{Key: k, Offered: ours, Answered: theirs}
	case kindAnd, kindOr:
		if theirs != "Yes" && theirs != "No" {
			return "", protoErr("%s=%q is not Yes or No", k, theirs)
		}
		if rule.kind == kindAnd && ours == "No" && theirs == "Yes" {
			return "", protoErr("target answered %s=Yes to our No (AND)", k)
		}
		if rule.kind == kindOr && ours == "Yes" && theirs == "No" {
			return "", protoErr("target answered %s=No to our Yes (OR)", k)
		}
		return theirs, nil
	case kindMin, kindMax:
		t, err := parseNumber(k, theirs)
		if err != nil {
			return "", protoErr("%s=%q is not a number", k, theirs)
		}
		if t < rule.lo || t > rule.hi {
			return "", protoErr("%s=%d out of range %d-%d", k, t, rule.lo, rule.hi)
		}
		o, err := parseNumber(k, ours)
		if err != nil {
			return "", err
		}
		if rule.kind == kindMin && t > o || rule.kind == kindMax && t < o {
			return "", protoErr("target answered %s=%d to our offer %d", k, t, o)
		}
		return strconv.FormatUint(t, 10), nil
	}
	n, err := parseNumber(k, theirs)
	if err != nil {
		return "", protoErr("%s=%q is not a number", k, theirs)
	}
	if n < rule.lo || n > rule.hi {
		return "", protoErr("%s=%d out of range %d-%d", k, n, rule.lo, rule.hi)
	}
	return theirs, nil
}

// answer is our response to a key the target offered first (target-initiated
// negotiation): the result of applying the rule to its offer and our preference.
func answer(k, theirs, ours string) string {
	rule, ok := keyRules[k]
	if !ok || ours == "" {
		return "NotUnderstood"
	}
	switch rule.kind {
	case kindList:
		for _, o := range strings.Split(ours, ",") {
			for _, t := range strings.Split(theirs, ",") {
				if o == t {
					return o
				}
			}
		}
		return "Reject"
	case kindAnd:
		if theirs == "Yes" && ours == "Yes" {
			return "Yes"
		}
		return "No"
	case kindOr:
		if theirs == "Yes" || ours == "Yes" {
			return "Yes"
		}
		return "No"
	case kindMin, kindMax:
		t, err1 := parseNumber(k, theirs)
		o, err2 := parseNumber(k, ours)
		if err1 != nil || err2 != nil || t < rule.lo || t > rule.hi {
			return "Reject"
		}
		if rule.kind == kindMin && t < o || rule.kind == kindMax && t > o {
			o = t
		}
		return strconv.FormatUint(o, 10)
	}
	return ours
}
