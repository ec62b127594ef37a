// Package tcpproxy is a TCP forwarder for tests that can be killed and brought back
// on the same port, as a network path that dies and returns: Kill closes the
// listener and resets every forwarded connection, Revive listens again.
package tcpproxy

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy forwards connections from Addr to an upstream address.
type Proxy struct {
	addr     string
	upstream string

	mu    sync.Mutex
	l     net.Listener // nil while killed
	conns map[net.Conn]bool
	wg    sync.WaitGroup

	accepted atomic.Int64
}

// Start listens on addr ("127.0.0.1:0" for any port) and forwards to upstream; the
// proxy is killed in t.Cleanup.
func Start(t testing.TB, addr, upstream string) *Proxy {
	t.Helper()
	p := &Proxy{addr: addr, upstream: upstream, conns: map[net.Conn]bool{}}
	if err := p.listen(); err != nil {
		t.Fatalf("tcpproxy: %v", err)
	}
	t.Cleanup(func() {
		p.Kill()
		p.wg.Wait()
	})
	return p
}

// Addr is the address the proxy listens on.
func (p *Proxy) Addr() string { return p.addr }

// Accepted counts the connections forwarded so far.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

func (p *Proxy) listen() error {
	l, err := net.Listen("tcp", p.addr)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.l = l
	p.addr = l.Addr().String()
	p.mu.Unlock()
	p.wg.Add(1)
	go p.accept(l)
	return nil
}

// Kill stops listening and resets every forwarded connection, both sides.
func (p *Proxy) Kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		p.l.Close()
		p.l = nil
	}
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // RST, as a crashed box or a pulled cable with a reset
		}
		c.Close()
	}
}

// Revive listens again on the same address.
func (p *Proxy) Revive() error {
	p.mu.Lock()
	live := p.l != nil
	p.mu.Unlock()
	if live {
		return nil
	}
	if err := p.listen(); err != nil {
		return fmt.Errorf("tcpproxy: revive %s: %w", p.addr, err)
	}
	return nil
}

func (p *Proxy) accept(l net.Listener) {
	defer p.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.upstream)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.l != l { // killed meanwhile
			p.mu.Unlock()
			c.Close()
			s.Close()
			continue
		}
		p.conns[c], p.conns[s] = true, true
		p.mu.Unlock()
		p.accepted.Add(1)
		p.wg.Add(2)
		go p.pipe(c, s)
		go p.pipe(s, c)
	}
}

func (p *Proxy) pipe(from, to net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			if _, werr := to.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	from.Close()
	to.Close()
	p.mu.Lock()
	delete(p.conns, from)
	delete(p.conns, to)
	p.mu.Unlock()
}
