// Package blockdev is the contract between a block storage backend (the iSCSI LUN, an
// in-memory disk in tests) and what exports it (the NBD server).
package blockdev

import "errors"

// Device is a random-access block device. Offsets and lengths passed to it are already
// bounds-checked by the caller but need not be block aligned for ReadAt/WriteAt on
// devices that say so; the NBD server aligns to BlockSize.
// All methods are safe for concurrent use.
type Device interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// WriteAtFUA writes with Force Unit Access: durable when it returns.
	WriteAtFUA(p []byte, off int64) (int, error)
	// Flush makes every completed write durable.
	Flush() error
	// Unmap discards the range (a hint: contents become unspecified).
	Unmap(off, length int64) error
	// WriteZeroes makes the range read back as zeroes.
	WriteZeroes(off, length int64) error
	Size() int64
	BlockSize() int
	ReadOnly() bool
}

// ErrReadOnly is returned by writes to a read-only device.
var ErrReadOnly = errors.New("blockdev: device is read-only")

// ErrOutOfRange is returned for I/O past the end of the device.
var ErrOutOfRange = errors.New("blockdev: offset out of range")
