//go:build !linux

package blockdev

import (
	"errors"
	"os"
)

var errNoFallocate = errors.New("fallocate: not on this system")

func datasync(f *os.File) error                     { return f.Sync() }
func punchHole(*os.File, int64, int64) error        { return errNoFallocate }
func zeroRange(f *os.File, off, length int64) error { return errNoFallocate }
