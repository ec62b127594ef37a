//go:build !linux

package sockio

import (
	"io"
	"net"
	"syscall"
)

// Conn is only implemented on Linux; elsewhere New returns nil and callers use the
// net.Conn itself.
type Conn struct{}

// New returns nil.
func New(net.Conn) *Conn { return nil }

func (*Conn) RawConn() syscall.RawConn       { return nil }
func (*Conn) Read([]byte) (int, error)       { return 0, io.ErrClosedPipe }
func (*Conn) Write([]byte) (int, error)      { return 0, io.ErrClosedPipe }
func (*Conn) Writev([][]byte) (int64, error) { return 0, io.ErrClosedPipe }
