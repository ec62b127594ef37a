package blockdev

import "bytes"

// ZeroWriter is a device whose WriteZeroes can cost less than writing the zeroes
// (WRITE SAME sends one block for the whole range).
type ZeroWriter interface {
	// ZeroesCheaply reports whether WriteZeroes sends no data now.
	ZeroesCheaply() bool
}

// ZeroesCheaply reports whether d, or a device it wraps, zeroes without sending the
// zeroes.
func ZeroesCheaply(d Device) bool {
	for {
		if z, ok := d.(ZeroWriter); ok {
			return z.ZeroesCheaply()
		}
		u, ok := d.(interface{ Unwrap() Device })
		if !ok {
			return false
		}
		d = u.Unwrap()
	}
}

var zeroBlock [4096]byte

// AllZero reports whether p holds only zero bytes. Data that is not zero usually
// differs in its first bytes, so the common case costs one short compare.
func AllZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroBlock))
		if !bytes.Equal(p[:n], zeroBlock[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}
