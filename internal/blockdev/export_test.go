package blockdev

// ReadAheadBuffersMade is how many buffers the read-ahead wrapping d allocated.
func ReadAheadBuffersMade(d Device) int {
	var r *ReadAhead
	switch w := d.(type) {
	case *ReadAhead:
		r = w
	case *readAheadExt:
		r = w.ReadAhead
	case *readAheadPipe:
		r = w.ReadAhead
	case *readAheadExtPipe:
		r = w.ReadAhead
	default:
		return -1
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.allocated
}
