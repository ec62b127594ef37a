package blockfmt

import (
	"errors"
	"strings"
	"testing"
)

func TestFillParseRoundTrip(t *testing.T) {
	b := make([]byte, 4096)
	Fill(b, 0xabc1, 12345, 100)
	h, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if h != (Header{Run: 0xabc1, Seq: 12345, Slot: 45}) {
		t.Fatalf("header %+v", h)
	}
	if err := Check(b, 0xabc1, 45, 100, 12346); err != nil {
		t.Fatalf("newest acknowledged block rejected: %v", err)
	}
}

func TestCheckCatchesLoss(t *testing.T) {
	const run, slots = 0x77, 10
	b := make([]byte, 512)
	Fill(b, run, 23, slots) // slot 3
	cases := []struct {
		name   string
		mutate func([]byte)
		run    uint64
		slot   uint64
		acked  uint64
		want   string
	}{
		{"stale: seq 33 was acknowledged", nil, run, 3, 34, "stale"},
		{"newer than acknowledged is fine", nil, run, 3, 20, ""},
		{"other run", nil, 0x78, 3, 24, "run"},
		{"wrong slot", nil, run, 4, 24, "slot"},
		{"flipped payload bit", func(b []byte) { b[300] ^= 1 }, run, 3, 24, ErrCRC.Error()},
		{"zeroed", func(b []byte) { clear(b) }, run, 3, 24, ErrMagic.Error()},
		{"torn tail", func(b []byte) { clear(b[256:]) }, run, 3, 24, ErrCRC.Error()},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			x := append([]byte(nil), b...)
			if c.mutate != nil {
				c.mutate(x)
			}
			err := Check(x, c.run, c.slot, slots, c.acked)
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
	if _, err := Parse(make([]byte, 4096)); !errors.Is(err, ErrMagic) {
		t.Fatalf("zero block: %v", err)
	}
}

func TestMinSeq(t *testing.T) {
	for _, c := range []struct {
		slot, slots, acked, want uint64
		ok                       bool
	}{
		{0, 10, 0, 0, false},
		{3, 10, 3, 0, false},
		{3, 10, 4, 3, true},
		{3, 10, 13, 3, true},
		{3, 10, 14, 13, true},
		{9, 10, 100, 99, true},
		{0, 10, 100, 90, true},
	} {
		got, ok := MinSeq(c.slot, c.slots, c.acked)
		if got != c.want || ok != c.ok {
			t.Errorf("MinSeq(%d,%d,%d) = %d,%v want %d,%v", c.slot, c.slots, c.acked, got, ok, c.want, c.ok)
		}
	}
}
