//go:build !linux

package rawsock

import (
	"io"
	"net"
	"time"
)

// Conn is only implemented on Linux; elsewhere New returns nil.
type Conn struct{}

// New returns nil: callers use the net.Conn itself.
func New(net.Conn) *Conn { return nil }

// Reader is nc.
func Reader(nc net.Conn) io.Reader { return nc }

// Writer is nc.
func Writer(nc net.Conn) io.Writer { return nc }

// MarkSetter sets a socket's SO_RCVLOWAT.
type MarkSetter interface {
	Set(fd uintptr, n int)
}

func (*Conn) ShareMark(MarkSetter)               {}
func (*Conn) Coalesce(func() int, time.Duration) {}
func (*Conn) Read([]byte) (int, error)           { return 0, io.ErrClosedPipe }
func (*Conn) Write([]byte) (int, error)          { return 0, io.ErrClosedPipe }
func (*Conn) Writev([][]byte) (int, error)       { return 0, io.ErrClosedPipe }
