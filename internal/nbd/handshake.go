package nbd

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// maxOptionData bounds what a client may send with one option; every option we know
// carries at most a name (up to 4 KiB by the spec) and a few info requests or meta
// context queries.
const maxOptionData = 16 << 10

// negotiated is what a client chose during the handshake, for its transmission phase.
type negotiated struct {
	// structured: NBD_OPT_STRUCTURED_REPLY was acknowledged, so reads are answered
	// with structured replies and NBD_FLAG_SEND_DF is offered.
	structured bool
	// allocation: the last NBD_OPT_SET_META_CONTEXT selected base:allocation, so
	// NBD_CMD_BLOCK_STATUS is allowed.
	allocation bool
	// kernel: the peer is the kernel's nbd driver on a socket we handed it (no
	// handshake); its requests may take the device's asynchronous path.
	kernel bool
}

// handshake runs the server side of the fixed newstyle negotiation. It reports whether
// the client entered transmission, and with what; (false, nil) means it aborted cleanly.
// The client is untrusted: every length it sends is checked before use, and nothing
// is allocated by a length larger than maxOptionData.
func (s *Server) handshake(r *bufio.Reader, w io.Writer) (negotiated, bool, error) {
	var neg negotiated
	var b [18]byte
	binary.BigEndian.PutUint64(b[0:], magicNBD)
	binary.BigEndian.PutUint64(b[8:], magicIHaveOpt)
	binary.BigEndian.PutUint16(b[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := w.Write(b[:]); err != nil {
		return neg, false, fmt.Errorf("handshake: %w", err)
	}
	if _, err := io.ReadFull(r, b[:4]); err != nil {
		return neg, false, fmt.Errorf("handshake: client flags: %w", err)
	}
	cflags := binary.BigEndian.Uint32(b[:4])
	if cflags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return neg, false, fmt.Errorf("handshake: unknown client flags %#x", cflags)
	}
	noZeroes := cflags&flagCNoZeroes != 0
	for {
		var h [16]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return neg, false, fmt.Errorf("handshake: option header: %w", err)
		}
		if m := binary.BigEndian.Uint64(h[0:]); m != magicIHaveOpt {
			return neg, false, fmt.Errorf("handshake: bad option magic %#x", m)
		}
		opt := binary.BigEndian.Uint32(h[8:])
		n := binary.BigEndian.Uint32(h[12:])
		if n > maxOptionData {
			return neg, false, fmt.Errorf("handshake: option %d carries %d bytes", opt, n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(r, data); err != nil {
			return neg, false, fmt.Errorf("handshake: option %d data: %w", opt, err)
		}
		switch opt {
		case optExportName:
			if !s.knowsExport(string(data)) {
				return neg, false, fmt.Errorf("handshake: unknown export %q", data)
			}
			reply := make([]byte, 10, 10+124)
			binary.BigEndian.PutUint64(reply[0:], uint64(s.dev.Size()))
			binary.BigEndian.PutUint16(reply[8:], s.flags(neg))
			if !noZeroes {
				reply = reply[:10+124]
			}
			if _, err := w.Write(reply); err != nil {
				return neg, false, fmt.Errorf("handshake: %w", err)
			}
			return neg, true, nil
		case optAbort:
			optReply(w, opt, repAck, nil) // best effort: the client may already be gone
			return neg, false, nil
		case optList:
			if n != 0 {
				if err := optReply(w, opt, repErrInvalid, []byte("LIST takes no data")); err != nil {
					return neg, false, err
				}
				continue
			}
			name := []byte(s.opts.ExportName)
			d := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
			d = append(append(d, name...), s.opts.Description...)
			if err := optReply(w, opt, repServer, d); err != nil {
				return neg, false, err
			}
			if err := optReply(w, opt, repAck, nil); err != nil {
				return neg, false, err
			}
		case optInfo, optGo:
			done, err := s.infoOrGo(w, opt, data, neg)
			if err != nil || (done && opt == optGo) {
				return neg, err == nil, err
			}
		case optStructured:
			typ := uint32(repAck)
			if n != 0 {
				typ = repErrInvalid
			} else {
				neg.structured = true
			}
			if err := optReply(w, opt, typ, nil); err != nil {
				return neg, false, err
			}
		case optListMeta, optSetMeta:
			if err := s.metaContext(w, opt, data, &neg); err != nil {
				return neg, false, err
			}
		default:
			if err := optReply(w, opt, repErrUnsup, nil); err != nil {
				return neg, false, err
			}
		}
	}
}

func (s *Server) knowsExport(name string) bool {
	return name == "" || name == s.opts.ExportName
}

// infoOrGo answers NBD_OPT_INFO and NBD_OPT_GO. It reports whether the export was
// accepted (for GO: transmission starts).
func (s *Server) infoOrGo(w io.Writer, opt uint32, data []byte, neg negotiated) (bool, error) {
	bad := func(msg string) (bool, error) { return false, optReply(w, opt, repErrInvalid, []byte(msg)) }
	if len(data) < 4 {
		return bad("short request")
	}
	nameLen := binary.BigEndian.Uint32(data)
	if uint64(len(data)) < 4+uint64(nameLen)+2 {
		return bad("short request")
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	nreq := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*nreq {
		return bad("info request count does not match length")
	}
	if !s.knowsExport(name) {
		return false, optReply(w, opt, repErrUnknown, []byte("unknown export"))
	}
	var wantName, wantDesc bool
	for i := range nreq {
		switch binary.BigEndian.Uint16(rest[2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
	}
	info := binary.BigEndian.AppendUint16(nil, infoExport)
	info = binary.BigEndian.AppendUint64(info, uint64(s.dev.Size()))
	info = binary.BigEndian.AppendUint16(info, s.flags(neg))
	if err := optReply(w, opt, repInfo, info); err != nil {
		return false, err
	}
	// Block sizes go out unasked: they are advice, and clients that honour them avoid
	// our read-modify-write path.
	bs := uint32(s.blockSize())
	info = binary.BigEndian.AppendUint16(info[:0], infoBlockSize)
	info = binary.BigEndian.AppendUint32(info, bs)
	info = binary.BigEndian.AppendUint32(info, max(bs, 4096))
	info = binary.BigEndian.AppendUint32(info, uint32(s.opts.MaxRequest))
	if err := optReply(w, opt, repInfo, info); err != nil {
		return false, err
	}
	if wantName {
		info = binary.BigEndian.AppendUint16(info[:0], infoName)
		if err := optReply(w, opt, repInfo, append(info, s.opts.ExportName...)); err != nil {
			return false, err
		}
	}
	if wantDesc && s.opts.Description != "" {
		info = binary.BigEndian.AppendUint16(info[:0], infoDescription)
		if err := optReply(w, opt, repInfo, append(info, s.opts.Description...)); err != nil {
			return false, err
		}
	}
	return true, optReply(w, opt, repAck, nil)
}

func optReply(w io.Writer, opt, typ uint32, data []byte) error {
	b := make([]byte, 20, 20+len(data))
	binary.BigEndian.PutUint64(b[0:], magicOptReply)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	if _, err := w.Write(append(b, data...)); err != nil {
		return fmt.Errorf("handshake: option %d reply: %w", opt, err)
	}
	return nil
}

// flags are the transmission flags for a client that negotiated neg: DF only with
// structured replies (the spec forbids it otherwise). Every read reply is one
// content chunk, so DF never needs a refusal.
func (s *Server) flags(neg negotiated) uint16 {
	f := s.TransmissionFlags()
	if neg.structured {
		f |= FlagSendDF
	}
	return f
}

// metaContext answers NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. The one
// context offered is base:allocation. SET replaces the selection even when it fails.
func (s *Server) metaContext(w io.Writer, opt uint32, data []byte, neg *negotiated) error {
	if opt == optSetMeta {
		neg.allocation = false
	}
	if !neg.structured {
		return optReply(w, opt, repErrInvalid, []byte("negotiate structured replies first"))
	}
	export, queries, typ := parseMetaRequest(data)
	if typ != repAck {
		return optReply(w, opt, typ, []byte("malformed meta context request"))
	}
	if !s.knowsExport(string(export)) {
		return optReply(w, opt, repErrUnknown, []byte("unknown export"))
	}
	var match bool
	if opt == optListMeta && len(queries) == 0 {
		match = true // no query lists everything
	}
	for _, q := range queries {
		switch string(q) {
		case metaBaseAllocation:
			match = true
		case "base:": // the namespace wildcard lists, but never selects
			match = match || opt == optListMeta
		}
		// Unknown namespaces and leaf names are ignored, as the spec asks.
	}
	if match {
		// LIST replies carry context ID 0 (reserved); SET gives the context its ID.
		id := uint32(0)
		if opt == optSetMeta {
			id = metaIDAllocation
			neg.allocation = true
		}
		d := binary.BigEndian.AppendUint32(nil, id)
		if err := optReply(w, opt, repMeta, append(d, metaBaseAllocation...)); err != nil {
			return err
		}
	}
	return optReply(w, opt, repAck, nil)
}

// parseMetaRequest splits a meta context request (export name, query count, queries,
// each string with a 32-bit length) and checks that every length stays inside data.
// typ is repAck when it is well formed, else the error reply to send. The queries
// alias data; there are at most len(data)/4 of them.
func parseMetaRequest(data []byte) (export []byte, queries [][]byte, typ uint32) {
	next := func() ([]byte, uint32) {
		if len(data) < 4 {
			return nil, repErrInvalid
		}
		n := binary.BigEndian.Uint32(data)
		if uint64(n) > uint64(len(data)-4) {
			return nil, repErrInvalid
		}
		if n > maxString {
			return nil, repErrTooBig
		}
		b := data[4 : 4+n]
		data = data[4+n:]
		return b, repAck
	}
	if export, typ = next(); typ != repAck {
		return nil, nil, typ
	}
	if len(data) < 4 {
		return nil, nil, repErrInvalid
	}
	count := binary.BigEndian.Uint32(data)
	data = data[4:]
	if uint64(count) > uint64(len(data)/4) {
		return nil, nil, repErrInvalid // each query needs at least its length
	}
	for range count {
		q, typ := next()
		if typ != repAck {
			return nil, nil, typ
		}
		queries = append(queries, q)
	}
	if len(data) != 0 {
		return nil, nil, repErrInvalid
	}
	return export, queries, repAck
}
