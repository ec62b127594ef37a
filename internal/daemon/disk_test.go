package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/nbd"
	"github.com/isboot/isboot/internal/status"
	"github.com/isboot/isboot/iscsi"
)

// inquiringDisk is a device that describes itself as an iSCSI LUN does.
type inquiringDisk struct {
	blockdev.Device
	q iscsi.Inquiry
}

func (d inquiringDisk) Inquiry() iscsi.Inquiry { return d.q }

var tgtdInquiry = iscsi.Inquiry{Vendor: "IET", Product: "VIRTUAL-DISK", Revision: "0001", Serial: "beaf11",
	ID: "naa.60000000000000000e00000000010001", BlockSize: 4096}

func TestDiskOf(t *testing.T) {
	want := status.Disk{Vendor: "IET", Product: "VIRTUAL-DISK", Revision: "0001", Serial: "beaf11",
		ID: "naa.60000000000000000e00000000010001", BlockSize: 4096}
	if got := DiskOf(inquiringDisk{blockdev.NewMem(1<<20, 4096, false), tgtdInquiry}); got != want {
		t.Errorf("an iSCSI LUN: %+v, want %+v", got, want)
	}
	if got := DiskOf(blockdev.NewMem(1<<20, 512, false)); got != (status.Disk{BlockSize: 512}) {
		t.Errorf("a memory disk: %+v, want its block size only", got)
	}
}

// The boot daemon publishes the disk as soon as it serves it, and names a LUN that
// has no number (here bus 1, LUN 5) by its 8 bytes.
func TestRunPublishesDisk(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.LUN, cfg.LUNAddr = 0, iscsi.LUNAddr{0x01, 0x05}
	sess := &fakeSession{lun: inquiringDisk{blockdev.NewMem(8<<20, 4096, false), tgtdInquiry}}
	att := &fakeAttachment{}
	att.live.Store(1)
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan Event, 4)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, cfg, Options{
			Dial:   func(context.Context, *Config, func(string, ...any)) (Session, error) { return sess, nil },
			Attach: func(*nbd.Server, nbd.AttachConfig) (Attachment, error) { return att, nil },
			Report: func(e Event) { events <- e },
		})
	}()
	select {
	case e := <-events:
		if e.Kind != EventReady {
			t.Fatalf("event %v, want ready", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no ready event")
	}
	m := readStatus(t, dir)
	for k, want := range map[string]string{
		"net.isboot.lun": "0105000000000000", "net.isboot.lun.vendor": "IET", "net.isboot.lun.product": "VIRTUAL-DISK",
		"net.isboot.lun.revision": "0001", "net.isboot.lun.serial": "beaf11",
		"net.isboot.lun.id": "naa.60000000000000000e00000000010001", "net.isboot.lun.block_size": "4096",
	} {
		if m[k] != want {
			t.Errorf("%s = %q, want %q", k, m[k], want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}
