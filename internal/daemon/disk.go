package daemon

import (
	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/status"
	"github.com/isboot/isboot/iscsi"
)

// DiskOf describes dev for the status file: what an iSCSI LUN says it is
// (iscsi.LUN.Inquiry), or only the block size of any other device.
func DiskOf(dev blockdev.Device) status.Disk {
	l, ok := dev.(interface{ Inquiry() iscsi.Inquiry })
	if !ok {
		return status.Disk{BlockSize: dev.BlockSize()}
	}
	q := l.Inquiry()
	return status.Disk{Vendor: q.Vendor, Product: q.Product, Revision: q.Revision,
		Serial: q.Serial, ID: q.ID, BlockSize: q.BlockSize}
}
