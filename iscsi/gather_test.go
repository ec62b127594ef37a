package iscsi

import (
	"bytes"
	"math/rand"
	"testing"
	"unsafe"
)

// vecRecorder is a socket's gathering write: it keeps the bytes and notes every
// piece of at least gatherMin bytes it was handed, by address.
type vecRecorder struct {
	bytes.Buffer
	pieces map[*byte]int
	calls  int
}

func (v *vecRecorder) Writev(bufs [][]byte) (int64, error) {
	v.calls++
	var n int64
	for _, b := range bufs {
		if len(b) >= gatherMin {
			v.pieces[unsafe.SliceData(b)] = len(b)
		}
		m, _ := v.Write(b)
		n += int64(m)
	}
	return n, nil
}

// Data segments of gatherMin bytes or more go to the socket from the caller's buffer,
// and the stream is byte for byte the one the copying writer makes, digests included.
func TestGatheredPDUsMatchCopied(t *testing.T) {
	sizes := []int{0, 5, gatherMin - 1, gatherMin, 3000, 8192, 20000, 70000}
	for _, digests := range []bool{false, true} {
		rng := rand.New(rand.NewSource(1))
		var want bytes.Buffer
		copying := pduWriter{w: &want, hdrDigest: digests, dataDigest: digests}
		got := &vecRecorder{pieces: map[*byte]int{}}
		gathering := pduWriter{w: got, wv: got, hdrDigest: digests, dataDigest: digests}
		var large [][]byte
		for i := 0; i < 600; i++ {
			data := make([]byte, sizes[rng.Intn(len(sizes))])
			rng.Read(data)
			if len(data) >= gatherMin {
				large = append(large, data)
			}
			var h bhs
			h.reset(opDataOut)
			h.setU32(16, uint32(i))
			h2 := h
			if err := copying.writePDU(&h, data); err != nil {
				t.Fatal(err)
			}
			if err := gathering.writePDU(&h2, data); err != nil {
				t.Fatal(err)
			}
			if rng.Intn(50) == 0 { // callers flush at any point
				copying.flush()
				gathering.flush()
			}
		}
		copying.flush()
		gathering.flush()
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("digests %v: gathered stream (%d bytes) differs from the copied one (%d bytes)", digests, got.Len(), want.Len())
		}
		for _, d := range large {
			if got.pieces[unsafe.SliceData(d)] != len(d) {
				t.Fatalf("digests %v: a %d-byte segment was copied, not gathered", digests, len(d))
			}
		}
		if got.calls >= len(large) {
			t.Errorf("digests %v: %d writev calls for %d gathered segments: nothing batched", digests, got.calls, len(large))
		}
		for _, b := range gathering.vec[:cap(gathering.vec)] {
			if b != nil {
				t.Fatalf("digests %v: a flushed writer still refers to a caller's buffer", digests)
			}
		}
	}
}

// Gathering allocates nothing once the writer's buffers exist.
func TestGatherAllocatesNothing(t *testing.T) {
	sink := &vecRecorder{pieces: map[*byte]int{}}
	w := pduWriter{w: sink, wv: sink}
	data := make([]byte, 8192)
	var h bhs
	h.reset(opDataOut)
	run := func() {
		for i := 0; i < 40; i++ {
			w.writePDU(&h, data)
		}
		w.flush()
		sink.Reset()
	}
	run()
	if a := testing.AllocsPerRun(20, run); a != 0 {
		t.Fatalf("%v allocations per 40 PDUs", a)
	}
}
