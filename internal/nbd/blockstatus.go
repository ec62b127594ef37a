package nbd

import (
	"encoding/binary"

	"github.com/isboot/isboot/internal/blockdev"
)

// maxDescriptors bounds the extents in one NBD_CMD_BLOCK_STATUS reply, so that its
// payload fits one 4 KiB pool buffer. The spec lets a server answer for less than the
// range asked; clients ask again from where the answer ends.
const maxDescriptors = (4096 - 4) / 8

// blockStatus answers NBD_CMD_BLOCK_STATUS for the base:allocation context: from the
// device where it is a blockdev.Extenter, else (or when it cannot tell) the whole
// range is allocated data, which the spec allows any server to say.
func (cn *conn) blockStatus(req request) {
	s := cn.s
	s.commands.Add(1)
	errno := s.checkBlockStatus(req, cn.neg)
	if errno != 0 {
		s.errs.Add(1)
		cn.reply(req, errno, nil)
		return
	}
	payload := s.bufs.get(4 + 8*maxDescriptors)
	defer s.bufs.put(payload)
	payload = s.allocation(payload[:0], req)
	if !cn.lock() {
		return
	}
	defer cn.unlock()
	cn.chunk(replyFlagDone, replyBlockStatus, req.cookie, uint32(len(payload)))
	cn.w.Write(cn.hdr[:chunkSize])
	cn.w.Write(payload)
}

// checkBlockStatus validates a BLOCK_STATUS request: it needs a selected context
// (which needs structured replies), only REQ_ONE (and the always-tolerated FUA)
// as flags, and a non-empty range inside the device.
func (s *Server) checkBlockStatus(req request, neg negotiated) uint32 {
	if !neg.allocation || req.flags&^(cmdFlagReqOne|cmdFlagFUA) != 0 {
		return errInval
	}
	size := uint64(s.dev.Size())
	if req.length == 0 || req.off > size || uint64(req.length) > size-req.off {
		return errInval
	}
	return 0
}

// allocation appends the BLOCK_STATUS payload for req to p: the context ID, then
// consecutive (length, flags) descriptors from req.off, none past the end of the
// request, at most maxDescriptors of them (one with REQ_ONE), merged where
// neighbours agree.
func (s *Server) allocation(p []byte, req request) []byte {
	off, end := int64(req.off), int64(req.off)+int64(req.length)
	bs := s.blockSize()
	lo, hi := alignDown(off, bs), min(alignUp(end, bs), s.dev.Size())
	var ext []blockdev.Extent
	if x, ok := s.dev.(blockdev.Extenter); ok {
		var err error
		ext, err = x.Extents(make([]blockdev.Extent, 0, 32), lo, hi-lo)
		if err != nil {
			s.opts.Logf("nbd: block status at %d+%d: %v (reporting data)", req.off, req.length, err)
			ext = nil
		}
	}
	maxN := maxDescriptors
	if req.flags&cmdFlagReqOne != 0 {
		maxN = 1
	}
	p = binary.BigEndian.AppendUint32(p, metaIDAllocation)
	n := 0
	var last uint32
	pos := lo
	for _, e := range ext {
		if e.Length <= 0 || pos >= end {
			break // a device breaking its contract gets no say past this point
		}
		l := min(e.Length, hi-pos)
		a, b := max(pos, off), min(pos+l, end)
		pos += l
		if b <= a {
			continue
		}
		var flags uint32
		if e.Flags&blockdev.ExtentHole != 0 {
			flags |= stateHole
		}
		if e.Flags&blockdev.ExtentZero != 0 {
			flags |= stateZero
		}
		if n > 0 && flags == last {
			d := p[len(p)-8:]
			binary.BigEndian.PutUint32(d, binary.BigEndian.Uint32(d)+uint32(b-a))
			continue
		}
		if n == maxN {
			break
		}
		p = binary.BigEndian.AppendUint32(p, uint32(b-a))
		p = binary.BigEndian.AppendUint32(p, flags)
		n, last = n+1, flags
	}
	if n == 0 { // nothing usable: the whole range is data
		p = binary.BigEndian.AppendUint32(p, req.length)
		p = binary.BigEndian.AppendUint32(p, 0)
	}
	return p
}
