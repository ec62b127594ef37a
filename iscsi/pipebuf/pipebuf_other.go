//go:build !linux

package pipebuf

import (
	"errors"
	"syscall"

	"github.com/isboot/isboot/iscsi/sockio"
)

// Pipe needs splice(2); elsewhere it holds nothing and every move fails, and no
// caller is offered one (sockio.New returns nil there).
type Pipe struct{}

var errUnsupported = errors.New("pipebuf: splice is Linux-only")

func (*Pipe) Len() int                             { return 0 }
func (*Pipe) Write([]byte) error                   { return errUnsupported }
func (*Pipe) SpliceFrom(*sockio.Conn, int) error   { return errUnsupported }
func (*Pipe) SpliceTo(syscall.RawConn) error       { return errUnsupported }
func (*Pipe) SpliceNTo(syscall.RawConn, int) error { return errUnsupported }
func (*Pipe) Read([]byte) (int, error)             { return 0, errUnsupported }
func (*Pipe) Reset()                               {}
func (*Pipe) Close()                               {}

// ToUnixCheap reports false: there is no splice.
func ToUnixCheap() bool { return false }
