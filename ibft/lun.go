package ibft

import "fmt"

// LUNNumber turns the 8-byte SAM LUN of a target structure into a LUN number.
//
// Firmware writes a single-level LUN: peripheral device addressing (LUN 1 is
// 00 01 00 00 00 00 00 00) or, for LUNs above 255, flat space addressing (40 01 ... is
// LUN 1 again). Both give the plain number. Anything else (a bus number, a second level,
// logical-unit or extended addressing) has no plain number; it gets the kernel's
// scsilun_to_int value, which is unique, so it still names one LUN. Commands carry the
// 8 bytes as stored either way (Target.LUNBytes), never a form rebuilt from this number.
func LUNNumber(raw [8]byte) uint64 {
	singleLevel := allZero(raw[2:])
	switch method := raw[0] >> 6; {
	case singleLevel && method == 0 && raw[0] == 0:
		return uint64(raw[1])
	case singleLevel && method == 1:
		return uint64(raw[0]&0x3f)<<8 | uint64(raw[1])
	}
	var n uint64
	for i := 0; i < 8; i += 2 {
		n |= uint64(raw[i])<<((i+1)*8) | uint64(raw[i+1])<<(i*8)
	}
	return n
}

// SAMLUN is the inverse of LUNNumber for plain LUN numbers: peripheral addressing up
// to 255, flat space addressing up to 16383. Larger numbers have no single-level form.
func SAMLUN(n uint64) ([8]byte, error) {
	var raw [8]byte
	switch {
	case n < 256:
		raw[1] = byte(n)
	case n < 1<<14:
		raw[0] = 0x40 | byte(n>>8)
		raw[1] = byte(n)
	default:
		return raw, fmt.Errorf("lun %d has no single-level SAM form", n)
	}
	return raw, nil
}
