package blockdev_test

import (
	"testing"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/iscsi"
)

// The iSCSI LUN satisfies the contract without importing it.
var _ blockdev.Device = (*iscsi.LUN)(nil)

func TestRefusalsRecognisedAcrossPackages(t *testing.T) {
	for _, c := range []struct {
		err                  error
		readOnly, outOfRange bool
	}{
		{blockdev.ErrReadOnly, true, false},
		{blockdev.ErrOutOfRange, false, true},
		{iscsi.ErrReadOnly, true, false},
		{iscsi.ErrOutOfRange, false, true},
		{iscsi.ErrClosed, false, false},
	} {
		if got := blockdev.IsReadOnly(c.err); got != c.readOnly {
			t.Errorf("IsReadOnly(%v) = %v, want %v", c.err, got, c.readOnly)
		}
		if got := blockdev.IsOutOfRange(c.err); got != c.outOfRange {
			t.Errorf("IsOutOfRange(%v) = %v, want %v", c.err, got, c.outOfRange)
		}
	}
}
