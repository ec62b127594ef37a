package iscsi

import (
	"bytes"
	"testing"
)

// FuzzPDUDecoder feeds arbitrary bytes to the PDU reader: it must never panic,
// never accept a segment above the negotiated maximum, and never allocate by a
// length the peer chose.
func FuzzPDUDecoder(f *testing.F) {
	var h bhs
	h.reset(opDataIn)
	h[1] = flagFinal | 1
	h.setDataLen(5)
	f.Add(append(append(h[:], "hello"...), 0, 0, 0), false)
	var w bytes.Buffer
	pw := pduWriter{w: &w, hdrDigest: true, dataDigest: true}
	pw.writePDU(&h, []byte("digest"))
	pw.flush()
	f.Add(w.Bytes(), true)
	h.setDataLen(0xffffff)
	f.Add(h[:], false)
	f.Fuzz(func(t *testing.T, data []byte, digests bool) {
		const maxData = 8192
		r := pduReader{r: bytes.NewReader(data), hdrDigest: digests, dataDigest: digests, maxData: maxData}
		buf := make([]byte, maxData)
		for i := 0; i < 64; i++ {
			if err := r.readHeader(); err != nil {
				return
			}
			n := r.hdr.dataLen()
			if n > maxData {
				t.Fatalf("accepted a %d-byte segment", n)
			}
			if err := r.readData(buf[:n]); err != nil {
				return
			}
		}
	})
}

// FuzzParseText: the login text parser never panics, keeps keys and values in
// bounds, and what it returns encodes and parses back to itself.
func FuzzParseText(f *testing.F) {
	f.Add([]byte("InitiatorName=iqn.2026-01.org.isboot:x\x00AuthMethod=CHAP,None\x00"))
	f.Add([]byte("CHAP_A=5\x00CHAP_I=1\x00CHAP_C=0x0123456789abcdef\x00\x00\x00"))
	f.Add([]byte("=\x00a\x00b=c"))
	f.Fuzz(func(t *testing.T, data []byte) {
		kvs, err := parseText(data)
		if err != nil {
			return
		}
		for _, kv := range kvs {
			if len(kv.Key) == 0 || len(kv.Key) > maxKeyLen || len(kv.Value) > maxValueLen {
				t.Fatalf("out of bounds: %q", kv.Key)
			}
		}
		again, err := parseText(encodeText(kvs))
		if err != nil || len(again) != len(kvs) {
			t.Fatalf("round trip: %v", err)
		}
		for i := range kvs {
			if again[i] != kvs[i] {
				t.Fatalf("round trip changed %v to %v", kvs[i], again[i])
			}
		}
		for _, kv := range kvs {
			negotiate(kv.Key, "1", kv.Value)
			answer(kv.Key, kv.Value, "1")
			decodeBinary(kv.Key, kv.Value)
		}
	})
}
