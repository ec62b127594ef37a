package iscsi

import (
	"encoding/binary"
	"fmt"
	"testing"
)

// lbaAnswer builds a GET LBA STATUS parameter list from (lba, blocks, status) triples.
func lbaAnswer(descs ...[3]uint64) []byte {
	b := make([]byte, 8, 8+16*len(descs))
	binary.BigEndian.PutUint32(b, uint32(4+16*len(descs)))
	for _, d := range descs {
		var e [16]byte
		binary.BigEndian.PutUint64(e[:], d[0])
		binary.BigEndian.PutUint32(e[8:], uint32(d[1]))
		e[12] = byte(d[2])
		b = append(b, e[:]...)
	}
	return b
}

func TestAppendLBAStatus(t *testing.T) {
	const h, z = ExtentHole, ExtentZero
	for _, c := range []struct {
		name          string
		b             []byte
		lba, blocks   uint64
		lbprz         bool
		want          []Extent
		wantUnchanged bool
	}{
		{"mapped, deallocated, mapped", lbaAnswer([3]uint64{0, 8, 0}, [3]uint64{8, 16, 1}, [3]uint64{24, 1000, 0}), 0, 100, true,
			[]Extent{{Length: 8 * 512}, {Length: 16 * 512, Flags: h | z}, {Length: 76 * 512}}, false},
		{"without LBPRZ a hole is not known to be zero", lbaAnswer([3]uint64{0, 8, 1}), 0, 8, false,
			[]Extent{{Length: 8 * 512, Flags: h}}, false},
		{"anchored: reserved, reads as zeroes", lbaAnswer([3]uint64{0, 8, 2}, [3]uint64{8, 8, 1}), 0, 16, true,
			[]Extent{{Length: 8 * 512, Flags: z}, {Length: 8 * 512, Flags: h | z}}, false},
		{"first descriptor starts before lba", lbaAnswer([3]uint64{0, 100, 1}, [3]uint64{100, 50, 0}), 40, 200, true,
			[]Extent{{Length: 60 * 512, Flags: h | z}, {Length: 50 * 512}}, false},
		{"neighbours merged, reserved status is data", lbaAnswer([3]uint64{10, 5, 0}, [3]uint64{15, 5, 7}), 10, 10, true,
			[]Extent{{Length: 10 * 512}}, false},
		{"a gap ends the answer", lbaAnswer([3]uint64{0, 8, 0}, [3]uint64{9, 8, 1}), 0, 100, true,
			[]Extent{{Length: 8 * 512}}, false},
		{"a zero count ends the answer", lbaAnswer([3]uint64{0, 8, 1}, [3]uint64{8, 0, 0}, [3]uint64{8, 8, 0}), 0, 100, true,
			[]Extent{{Length: 8 * 512, Flags: h | z}}, false},
		{"a descriptor behind is skipped", lbaAnswer([3]uint64{0, 4, 1}, [3]uint64{0, 16, 0}), 8, 8, true,
			[]Extent{{Length: 8 * 512}}, false},
		{"parameter data length bounds the list", lbaAnswer([3]uint64{0, 8, 0}, [3]uint64{8, 8, 1})[:8+16+16], 0, 16, true,
			[]Extent{{Length: 8 * 512}, {Length: 8 * 512, Flags: h | z}}, false},
		{"huge count near the top of the LBA space", lbaAnswer([3]uint64{^uint64(0) - 5, 0xffffffff, 1}), ^uint64(0) - 3, 2, true,
			[]Extent{{Length: 2 * 512, Flags: h | z}}, false},
		{"does not describe lba", lbaAnswer([3]uint64{16, 8, 0}), 0, 8, true, nil, true},
		{"empty answer (gotgt)", nil, 0, 8, true, nil, true},
		{"header only", lbaAnswer(), 0, 8, true, nil, true},
	} {
		// The parameter-data-length case: claim one descriptor fewer than sent.
		if c.name == "parameter data length bounds the list" {
			c.b = append(c.b, lbaAnswer([3]uint64{16, 8, 0})[8:]...)
			binary.BigEndian.PutUint32(c.b, 4+32)
		}
		prefix := []Extent{{Length: 1, Flags: 9}}
		got := appendLBAStatus(prefix, c.b, c.lba, c.blocks, 512, c.lbprz)
		if fmt.Sprint(got[1:]) != fmt.Sprint(c.want) || got[0] != prefix[0] {
			t.Errorf("%s: %v, want %v", c.name, got[1:], c.want)
		}
	}
}

func TestGetLBAStatusCDB(t *testing.T) {
	c := cdbGetLBAStatus(0x0102030405060708, 4088)
	want := []byte{0x9e, 0x12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0x0f, 0xf8, 0, 0}
	if c.n != 16 || string(c.b[:]) != string(want) {
		t.Errorf("CDB % x, want % x", c.b[:c.n], want)
	}
}

// TestLUNExtentsTargetAnswers drives LUN.Extents against a fake command queue: a
// good answer becomes extents; a refusal (ILLEGAL REQUEST) or an answer that does not
// describe the range makes the LUN report data and stop asking.
func TestLUNExtentsTargetAnswers(t *testing.T) {
	type answer struct {
		key  byte   // sense key of a CHECK CONDITION, or 0 for GOOD
		data []byte // Data-In for GOOD
	}
	good := lbaAnswer([3]uint64{0, 8, 0}, [3]uint64{8, 2040, 1})
	for _, c := range []struct {
		name     string
		answer   answer
		want     []Extent
		stillAsk bool
		wantErr  bool
	}{
		{"provisioning known", answer{0, good}, []Extent{{Length: 4096}, {Length: 1<<20 - 4096, Flags: ExtentHole | ExtentZero}}, true, false},
		{"refused", answer{senseIllegalRequest, nil}, []Extent{{Length: 1 << 20}}, false, false},
		{"empty answer", answer{0, nil}, []Extent{{Length: 1 << 20}}, false, false},
		{"medium error", answer{senseMediumError, nil}, nil, true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, _ := (&Config{Portals: []string{"x:1"}, TargetName: "t", QueueDepth: 2, Logf: t.Logf}).withDefaults()
			s := newSession(cfg)
			fake := &conn{s: s, gen: 1}
			var cdbs []cdb
			go func() {
				for ref := range s.cmdCh {
					if !s.claim(ref, fake.gen) {
						continue
					}
					cdbs = append(cdbs, ref.t.cdb)
					if c.answer.key != 0 {
						ref.t.status = statusCheckCondition
						ref.t.senseLen = copy(ref.t.sense[:], []byte{0x70, 0, c.answer.key, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0})
					} else {
						n := copy(ref.t.buf, c.answer.data)
						ref.t.resid = int64(len(ref.t.buf) - n)
					}
					s.complete(fake, ref.t)
				}
			}()
			defer close(s.cmdCh)
			l := &LUN{s: s, blockSize: 512, lbprz: true}
			l.blocks.Store(2048)
			l.lbaStatus.Store(true)
			for i := range 2 {
				got, err := l.Extents(nil, 0, 1<<20)
				if c.wantErr {
					if err == nil {
						t.Fatalf("no error from a medium error")
					}
					return
				}
				if err != nil || fmt.Sprint(got) != fmt.Sprint(c.want) {
					t.Fatalf("call %d: %v, %v; want %v", i, got, err, c.want)
				}
			}
			wantCmds := 2
			if !c.stillAsk {
				wantCmds = 1
			}
			if len(cdbs) != wantCmds || l.lbaStatus.Load() != c.stillAsk {
				t.Errorf("%d GET LBA STATUS commands, still asking %v", len(cdbs), l.lbaStatus.Load())
			}
			if cdbs[0].b[0] != 0x9e || cdbs[0].b[1] != 0x12 {
				t.Errorf("sent CDB % x", cdbs[0].b[:cdbs[0].n])
			}
		})
	}
	// Misaligned or out-of-range queries are refused before anything is sent.
	l := &LUN{blockSize: 512}
	l.blocks.Store(2048)
	if _, err := l.Extents(nil, 100, 512); err == nil {
		t.Error("unaligned query accepted")
	}
	if _, err := l.Extents(nil, 1<<20-512, 1024); err != ErrOutOfRange {
		t.Errorf("query past the end: %v", err)
	}
	// Without LBPME nothing is asked: all data.
	if got, err := l.Extents(nil, 0, 4096); err != nil || fmt.Sprint(got) != fmt.Sprint([]Extent{{Length: 4096}}) {
		t.Errorf("LUN without provisioning: %v, %v", got, err)
	}
}

// FuzzLBAStatus: whatever a target answers to GET LBA STATUS, the extents cover at
// most the range asked, each a positive number of whole blocks with known flags.
func FuzzLBAStatus(f *testing.F) {
	f.Add(lbaAnswer([3]uint64{0, 8, 0}, [3]uint64{8, 16, 1}, [3]uint64{24, 1000, 2}), uint64(0), uint64(100), true)
	f.Add(lbaAnswer([3]uint64{^uint64(0) - 5, 0xffffffff, 1}), ^uint64(0)-3, uint64(2), false)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, uint64(1), uint64(1<<40), true)
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0}, uint64(0), uint64(1), true) // PARAMETER DATA LENGTH 0
	f.Fuzz(func(t *testing.T, b []byte, lba, blocks uint64, lbprz bool) {
		if lba+blocks < lba {
			return // LUN.check keeps ranges inside the LUN
		}
		var sum uint64
		for _, e := range appendLBAStatus(nil, b, lba, blocks, 4096, lbprz) {
			if e.Length <= 0 || e.Length%4096 != 0 || e.Flags&^(ExtentHole|ExtentZero) != 0 {
				t.Fatalf("extent %+v", e)
			}
			sum += uint64(e.Length) / 4096
		}
		if sum > blocks {
			t.Fatalf("%d blocks described of %d asked", sum, blocks)
		}
	})
}
