package nbd

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/iscsi"
)

// TestReadAheadThroughISCSI reads a tgtd LUN the way dd does on the kernel's device,
// one 256 KiB read at a time, through blockdev.ReadAhead, and every few reads writes
// into the range being fetched ahead. Every read returns the bytes last written, and
// most reads are served from what was fetched ahead.
func TestReadAheadThroughISCSI(t *testing.T) {
	testenv.Require(t, "integration test", "tgtd")
	const size, bs = 16 << 20, 256 << 10
	d, sess := tgtdSession(t, testtarget.TgtdOptions{Size: size}, "readahead", iscsi.Config{Logf: t.Logf})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lun := sess.LUN()
	data := randBytes(size, 91)
	if _, err := lun.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	ra := blockdev.NewReadAhead(lun, blockdev.DefaultReadAheadMin, blockdev.DefaultReadAheadMax)
	srv := NewServer(ra, Options{ExportName: d.IQN, SpliceMin: -1}) // reads through memory, as on the kernel's socket before 6.5

	tc, done := serveKernelStyle(t, ctx, srv)
	writes := 0
	for pass := range 2 {
		for off := uint64(0); off < size; off += bs {
			errno, got, err := tc.do(cmdRead, 0, off, bs, nil)
			if err != nil || errno != 0 {
				t.Fatalf("pass %d: read at %d: errno %d, %v", pass, off, errno, err)
			}
			if !bytes.Equal(got, data[off:off+bs]) {
				t.Fatalf("pass %d: read at %d returned other bytes than were last written", pass, off)
			}
			if (off/bs)%5 == 3 && off+2*bs <= size {
				// Into the range the read ahead is fetching now.
				w := randBytes(4096, off+uint64(pass))
				at := off + bs + uint64(pass)*8192
				if errno, _, err := tc.do(cmdWrite, 0, at, uint32(len(w)), w); err != nil || errno != 0 {
					t.Fatalf("write at %d: errno %d, %v", at, errno, err)
				}
				copy(data[at:], w)
				writes++
			}
		}
	}
	st := ra.(interface {
		Stats() blockdev.ReadAheadStats
	}).Stats()
	t.Logf("read-ahead %+v, %d writes", st, writes)
	reads := uint64(2 * size / bs)
	if st.Hits < reads/2 {
		t.Errorf("%d of %d reads served from the read ahead, want at least half", st.Hits, reads)
	}
	if st.Wasted < uint64(writes) {
		t.Errorf("%d reads ahead dropped, want one per write (%d)", st.Wasted, writes)
	}
	tc.send(cmdDisc, 0, 0, 0, 0, nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
