package nbd

import "testing"

func TestBufPoolReusesAndBoundsRetention(t *testing.T) {
	p := newBufPool(1<<20, 3*minBuf)
	a := p.get(100)
	if len(a) != 100 || cap(a) != minBuf {
		t.Fatalf("get(100): len %d cap %d, want 100/%d", len(a), cap(a), minBuf)
	}
	p.put(a)
	if b := p.get(minBuf); &b[0] != &a[:1][0] {
		t.Error("a returned buffer of the same class was not reused")
	}
	if c := p.get(minBuf + 1); cap(c) != 2*minBuf {
		t.Errorf("get(%d): cap %d, want the next class %d", minBuf+1, cap(c), 2*minBuf)
	}
	if big := p.get(2 << 20); len(big) != 2<<20 {
		t.Errorf("oversized get: len %d", len(big))
	}
	for range 4 {
		p.put(make([]byte, minBuf))
	}
	if p.retained > p.maxRetained {
		t.Errorf("retains %d bytes, bound %d", p.retained, p.maxRetained)
	}
	p.put(make([]byte, 10, 5000)) // not a pool size class: dropped
	if p.retained != 3*minBuf {
		t.Errorf("retained %d, want %d", p.retained, 3*minBuf)
	}
}
