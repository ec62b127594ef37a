package iscsi

import (
	"bytes"
	"testing"

	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/iscsi/pipebuf"
)

// TestReadAtPipe reads extents of many sizes into pipes while the proxy cuts every
// connection after a few dozen commands, so reads die with their pipes half full and
// are reissued: every pipe ends holding exactly its extent's bytes. With digests the
// bytes are copied in (a data digest must see them) and the header digest follows a
// spliced segment; the outcome must be the same.
// pipeExtent is one read of the pipe tests: where, and how many bytes.
type pipeExtent struct {
	off  int64
	size int
}

// pipeExtents lays count extents end to end, their sizes taken from sizes in turn.
func pipeExtents(count int, sizes ...int) []pipeExtent {
	var extents []pipeExtent
	var off int64
	for i := range count {
		n := sizes[i%len(sizes)]
		extents = append(extents, pipeExtent{off, n})
		off += int64(n)
	}
	return extents
}

func TestReadAtPipe(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{Size: 64 << 20,
		Params: [][2]string{{"HeaderDigest", "CRC32C,None"}, {"DataDigest", "CRC32C,None"}}})
	extents := pipeExtents(48, 64<<10, 68<<10, 256<<10, 260<<10, 1<<20, 1<<20+4096, 2<<20)
	{
		s := dial(t, testConfig(d))
		l := s.LUN()
		errs := asyncAll(len(extents), func(i int, done func(int, error)) {
			l.WriteAtAsync(pattern(extents[i].size, uint64(i)), extents[i].off, false, done)
		})
		for i, err := range errs {
			if err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
		}
		s.Close()
	}
	for _, tc := range []struct {
		name    string
		digests Digest
	}{{"spliced", DigestNone}, {"digests", DigestCRC32C}} {
		t.Run(tc.name, func(t *testing.T) {
			p := newFaultProxy(t, d.Addr())
			cfg := faultConfig(d, p.Addr())
			cfg.HeaderDigest, cfg.DataDigest = tc.digests, tc.digests
			s := dial(t, cfg)
			defer s.Close()
			l := s.LUN()
			pipes := make([]*pipebuf.Pipe, len(extents))
			for i := range pipes {
				pipes[i] = new(pipebuf.Pipe)
				defer pipes[i].Close()
			}
			p.cutAfter.Store(3000) // login plus a few dozen commands
			for round := range 3 {
				errs := asyncAll(len(extents), func(i int, done func(int, error)) {
					pipes[i].Reset()
					if !l.ReadAtPipe(pipes[i], extents[i].size, extents[i].off, done) {
						t.Fatalf("ReadAtPipe refused %d bytes", extents[i].size)
					}
				})
				for i, err := range errs {
					if err != nil {
						t.Fatalf("round %d, read %d: %v", round, i, err)
					}
					got := make([]byte, extents[i].size+1)
					n, err := pipes[i].Read(got)
					if err != nil || n != extents[i].size || !bytes.Equal(got[:n], pattern(extents[i].size, uint64(i))) {
						t.Fatalf("round %d, extent %d (%d bytes): pipe held %d bytes, other than written (%v)", round, i, extents[i].size, n, err)
					}
				}
			}
			p.cutAfter.Store(0)
			if s.Stats().Reconnects == 0 {
				t.Fatal("the proxy cut no connection: the test did not exercise reissue")
			}
			t.Logf("stats: %+v", s.Stats())
			if l.ReadAtPipe(new(pipebuf.Pipe), l.maxXfer+l.blockSize, 0, func(int, error) {}) {
				t.Error("a read above the maximum transfer was taken")
			}
		})
	}
}

// TestPipeReadsAmidSmallReads mixes 1 MiB pipe reads into a stream of 4 KiB reads at
// queue depth 48, where the reader coalesces wake-ups with a low-water mark: a splice
// waits for exactly the bytes its PDU still holds, never for the mark, so every read
// completes, with the bytes written.
func TestPipeReadsAmidSmallReads(t *testing.T) {
	d := startTgtd(t, testtarget.TgtdOptions{Size: 32 << 20})
	cfg := testConfig(d)
	cfg.QueueDepth = 48
	s := dial(t, cfg)
	defer s.Close()
	l := s.LUN()
	const big = 1 << 20
	data := pattern(16<<20, 5)
	for off := 0; off < len(data); off += 4 << 20 {
		if _, err := l.WriteAt(data[off:off+4<<20], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	const n = 2000
	pipes := map[int]*pipebuf.Pipe{}
	bufs := make([][]byte, n)
	offs := make([]int, n)
	errs := asyncAll(n, func(i int, done func(int, error)) {
		if i%50 == 7 {
			p := new(pipebuf.Pipe)
			pipes[i] = p
			offs[i] = (i * big) % (len(data) - big)
			offs[i] -= offs[i] % 4096
			l.ReadAtPipe(p, big, int64(offs[i]), done)
			return
		}
		offs[i] = (i * 7919 * 4096) % len(data)
		bufs[i] = make([]byte, 4096)
		l.ReadAtAsync(bufs[i], int64(offs[i]), done)
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if p := pipes[i]; p != nil {
			b := make([]byte, big)
			if m, err := p.Read(b); err != nil || m != big || !bytes.Equal(b, data[offs[i]:offs[i]+big]) {
				t.Fatalf("pipe read %d: %d bytes (%v), other than written", i, m, err)
			}
			p.Close()
		} else if !bytes.Equal(bufs[i], data[offs[i]:offs[i]+4096]) {
			t.Fatalf("read %d returned other bytes", i)
		}
	}
}
