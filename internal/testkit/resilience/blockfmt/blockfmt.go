// Package blockfmt is the self-describing block format of the resilience
// tests' writer: every block says which run wrote it, its sequence number and
// slot, and carries a CRC over all of it, so a verifier can tell a durable
// block from a stale, misplaced or torn one without any other record.
//
// Sequence number s always lands in slot s % slots, so the newest block an
// acknowledged fsync covers in each slot is known from the acknowledged
// count alone.
package blockfmt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Magic starts every block.
const Magic = "ISBVRFY1"

// HeaderSize is the part of a block before the payload.
const HeaderSize = 40

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header is what a block says about itself.
type Header struct {
	Run  uint64
	Seq  uint64
	Slot uint64
}

// Fill writes block number seq of run into b (len(b) is the block size): the
// header, a payload derived from (run, seq), and the CRC.
func Fill(b []byte, run, seq, slots uint64) {
	copy(b, Magic)
	binary.LittleEndian.PutUint64(b[8:], run)
	binary.LittleEndian.PutUint64(b[16:], seq)
	binary.LittleEndian.PutUint64(b[24:], seq%slots)
	// xorshift64 from the block's identity: a block copied to the wrong place,
	// or from another run, has the wrong payload as well as the wrong header.
	x := run ^ (seq * 0x9E3779B97F4A7C15) ^ 0x5DEECE66D
	for i := HeaderSize; i+8 <= len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
	binary.LittleEndian.PutUint64(b[32:], 0) // CRC field and padding
	binary.LittleEndian.PutUint32(b[32:], crc32.Checksum(b, castagnoli))
}

// Errors Parse returns; each names what is wrong with a block.
var (
	ErrMagic = errors.New("no block magic (never written, zeroed or foreign)")
	ErrCRC   = errors.New("CRC mismatch (torn or corrupted)")
)

// Parse checks a block's magic and CRC and returns its header.
func Parse(b []byte) (Header, error) {
	if len(b) < HeaderSize || string(b[:8]) != Magic {
		return Header{}, ErrMagic
	}
	want := binary.LittleEndian.Uint32(b[32:])
	var zero [4]byte
	c := crc32.Update(0, castagnoli, b[:32])
	c = crc32.Update(c, castagnoli, zero[:])
	c = crc32.Update(c, castagnoli, b[36:])
	if c != want {
		return Header{}, ErrCRC
	}
	return Header{
		Run:  binary.LittleEndian.Uint64(b[8:]),
		Seq:  binary.LittleEndian.Uint64(b[16:]),
		Slot: binary.LittleEndian.Uint64(b[24:]),
	}, nil
}

// Check verifies that block b, found in slot, is what a run that had
// acknowledged every sequence number below acked may leave there: intact,
// from this run, in its slot, and no older than the newest acknowledged
// block for the slot. Newer (written, not yet acknowledged) blocks are fine.
func Check(b []byte, run, slot, slots, acked uint64) error {
	h, err := Parse(b)
	if err != nil {
		return err
	}
	if h.Run != run {
		return fmt.Errorf("run %#x, want %#x", h.Run, run)
	}
	if h.Slot != slot || h.Seq%slots != slot {
		return fmt.Errorf("seq %d (slot %d) found in slot %d", h.Seq, h.Slot, slot)
	}
	if min, ok := MinSeq(slot, slots, acked); ok && h.Seq < min {
		return fmt.Errorf("seq %d is stale: seq %d was acknowledged durable", h.Seq, min)
	}
	return nil
}

// MinSeq is the newest acknowledged sequence number that maps to slot: the
// largest s < acked with s % slots == slot. ok is false when none does.
func MinSeq(slot, slots, acked uint64) (uint64, bool) {
	if acked <= slot {
		return 0, false
	}
	return slot + (acked-1-slot)/slots*slots, true
}
