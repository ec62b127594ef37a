package nbd

// The device works in whole blocks; NBD clients that did not ask for block sizes may
// send any byte range. These helpers turn ranges into block-aligned device calls.

func (s *Server) blockSize() int64 {
	if bs := s.dev.BlockSize(); bs > 0 {
		return int64(bs)
	}
	return 1
}

func alignDown(x, bs int64) int64 { return x - x%bs }
func alignUp(x, bs int64) int64   { return alignDown(x+bs-1, bs) }

// read fills p from off. On failure it reports how many leading bytes of p were read
// all the same (fewer than len(p)), which a structured reply can still deliver.
func (s *Server) read(p []byte, off int64) (int, error) {
	bs := s.blockSize()
	end := off + int64(len(p))
	if off%bs == 0 && end%bs == 0 {
		n, err := s.dev.ReadAt(p, off)
		if err != nil && (n < 0 || n >= len(p)) {
			n = 0 // a device that failed yet claims it all: trust none of it
		}
		return n, err
	}
	lo, hi := alignDown(off, bs), alignUp(end, bs)
	bounce := s.bufs.get(int(hi - lo))
	defer s.bufs.put(bounce)
	n, err := s.dev.ReadAt(bounce, lo)
	if err != nil {
		if n <= int(off-lo) || n >= int(off-lo)+len(p) {
			return 0, err // nothing of p, or (not trusted) all of it
		}
		return copy(p, bounce[off-lo:n]), err
	}
	copy(p, bounce[off-lo:])
	return len(p), nil
}

func (s *Server) writeAt(p []byte, off int64, fua bool) error {
	var err error
	if fua {
		_, err = s.dev.WriteAtFUA(p, off)
	} else {
		_, err = s.dev.WriteAt(p, off)
	}
	return err
}

func (s *Server) write(p []byte, off int64, fua bool) error {
	bs := s.blockSize()
	end := off + int64(len(p))
	if off%bs == 0 && end%bs == 0 {
		return s.writeAt(p, off, fua)
	}
	lo, hi := alignDown(off, bs), alignUp(end, bs)
	bounce := s.bufs.get(int(hi - lo))
	defer s.bufs.put(bounce)
	s.rmw.Lock()
	defer s.rmw.Unlock()
	if off != lo {
		if _, err := s.dev.ReadAt(bounce[:bs], lo); err != nil {
			return err
		}
	}
	if end != hi {
		if _, err := s.dev.ReadAt(bounce[hi-lo-bs:], hi-bs); err != nil {
			return err
		}
	}
	copy(bounce[off-lo:], p)
	return s.writeAt(bounce, lo, fua)
}

// trim discards the whole blocks inside the range; partial blocks are left alone,
// which a hint allows.
func (s *Server) trim(off, n int64) error {
	bs := s.blockSize()
	lo, hi := alignUp(off, bs), alignDown(off+n, bs)
	if hi <= lo {
		return nil
	}
	return s.dev.Unmap(lo, hi-lo)
}

// writeZeroes zeroes whole blocks on the device and partial edge blocks by writing.
func (s *Server) writeZeroes(off, n int64) error {
	bs := s.blockSize()
	end := off + n
	lo, hi := alignUp(off, bs), alignDown(end, bs)
	if lo > end { // the whole range lies inside one block
		lo = end
	}
	if off < lo {
		if err := s.writeZeroBytes(off, lo-off); err != nil {
			return err
		}
	}
	if hi > lo {
		if err := s.dev.WriteZeroes(lo, hi-lo); err != nil {
			return err
		}
	}
	if end > hi && hi >= lo {
		return s.writeZeroBytes(max(hi, lo), end-max(hi, lo))
	}
	return nil
}

func (s *Server) writeZeroBytes(off, n int64) error {
	z := s.bufs.get(int(n))
	defer s.bufs.put(z)
	clear(z)
	return s.write(z, off, false)
}
