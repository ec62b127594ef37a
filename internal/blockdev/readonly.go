package blockdev

// ReadOnly exports a writable Device read-only (`isboot serve --read-only`).
type ReadOnly struct{ Device }

func (ReadOnly) ReadOnly() bool                        { return true }
func (ReadOnly) WriteAt([]byte, int64) (int, error)    { return 0, ErrReadOnly }
func (ReadOnly) WriteAtFUA([]byte, int64) (int, error) { return 0, ErrReadOnly }
func (ReadOnly) Unmap(int64, int64) error              { return ErrReadOnly }
func (ReadOnly) WriteZeroes(int64, int64) error        { return ErrReadOnly }

// Extents passes on the wrapped device's allocation map, so a read-only export still
// lets copies skip holes; a device without one is all data.
func (r ReadOnly) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	if e, ok := r.Device.(Extenter); ok {
		return e.Extents(dst, off, length)
	}
	return append(dst, Extent{Length: length}), nil
}
