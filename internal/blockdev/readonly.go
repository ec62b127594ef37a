package blockdev

// ReadOnly exports a writable Device read-only (`isboot serve --read-only`).
type ReadOnly struct{ Device }

func (ReadOnly) ReadOnly() bool                        { return true }
func (ReadOnly) WriteAt([]byte, int64) (int, error)    { return 0, ErrReadOnly }
func (ReadOnly) WriteAtFUA([]byte, int64) (int, error) { return 0, ErrReadOnly }
func (ReadOnly) Unmap(int64, int64) error              { return ErrReadOnly }
func (ReadOnly) WriteZeroes(int64, int64) error        { return ErrReadOnly }
