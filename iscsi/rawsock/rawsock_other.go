//go:build !linux

package rawsock

import (
	"io"
	"net"
	"syscall"
	"time"
)

// Conn is only implemented on Linux; elsewhere New returns nil.
type Conn struct{}

// New returns nil: callers read the net.Conn itself.
func New(net.Conn, syscall.RawConn) *Conn { return nil }

func (*Conn) Coalesce(func() int, time.Duration) {}
func (*Conn) Unmark()                            {}
func (*Conn) Promise(int)                        {}
func (*Conn) WaitQueued(int) error               { return nil }
func (*Conn) Read([]byte) (int, error)           { return 0, io.ErrClosedPipe }
