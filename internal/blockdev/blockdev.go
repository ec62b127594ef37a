// Package blockdev is the contract between a block storage backend (the iSCSI LUN, an
// in-memory disk in tests) and what exports it (the NBD server).
package blockdev

import (
	"errors"
	"fmt"
	"syscall"
)

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

// Devices report the two refusals an exporter must tell apart from an I/O error with
// errors that wrap an errno, so that a backend (the iscsi package) can satisfy this
// contract structurally without importing it: errors.Is(err, syscall.EROFS) is a write
// to a read-only device, errors.Is(err, syscall.ERANGE) an access past its end.
var (
	ErrReadOnly   = fmt.Errorf("blockdev: device is read-only: %w", syscall.EROFS)
	ErrOutOfRange = fmt.Errorf("blockdev: offset out of range: %w", syscall.ERANGE)
)

// IsReadOnly reports whether err is a device's read-only refusal.
func IsReadOnly(err error) bool { return errors.Is(err, syscall.EROFS) }

// IsOutOfRange reports whether err is a device's out-of-range refusal.
func IsOutOfRange(err error) bool { return errors.Is(err, syscall.ERANGE) }
