package iscsi

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// faultProxy forwards TCP to a target and breaks connections on demand: it cuts
// them (now, or after a number of initiator bytes) and stalls them (holds all bytes
// without closing), as a failing network does.
type faultProxy struct {
	t        testing.TB
	l        net.Listener
	mu       sync.Mutex
	upstream string // guarded by mu
	links    map[*link]bool
	cutAfter atomic.Int64 // >0: cut a link once it forwarded this many initiator bytes
	accepted atomic.Int64
	wg       sync.WaitGroup
}

type link struct {
	client, server net.Conn
	sent           atomic.Int64
	stall          atomic.Bool
	// replyCut armed: cut the link once replyLeft more target bytes went through.
	replyCut  atomic.Bool
	replyLeft atomic.Int64
	once      sync.Once
}

func (k *link) close() {
	k.once.Do(func() {
		k.client.Close()
		k.server.Close()
	})
}

func newFaultProxy(t testing.TB, upstream string) *faultProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{t: t, l: l, upstream: upstream, links: map[*link]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		l.Close()
		p.CutAll()
		p.wg.Wait()
	})
	return p
}

func (p *faultProxy) Addr() string { return p.l.Addr().String() }

// SetUpstream sends the connections accepted from now on to addr.
func (p *faultProxy) SetUpstream(addr string) {
	p.mu.Lock()
	p.upstream = addr
	p.mu.Unlock()
}

func (p *faultProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		upstream := p.upstream
		p.mu.Unlock()
		s, err := net.Dial("tcp", upstream)
		if err != nil {
			c.Close()
			continue
		}
		p.accepted.Add(1)
		k := &link{client: c, server: s}
		p.mu.Lock()
		p.links[k] = true
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(k, c, s, true)
		go p.pipe(k, s, c, false)
	}
}

func (p *faultProxy) pipe(k *link, from, to net.Conn, fromClient bool) {
	defer p.wg.Done()
	defer func() {
		k.close()
		p.mu.Lock()
		delete(p.links, k)
		p.mu.Unlock()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			if k.stall.Load() {
				// Swallow everything: the peer sees a silent network until a side closes.
				continue
			}
			if !fromClient && k.replyCut.Load() && k.replyLeft.Add(-int64(n)) < 0 {
				to.Write(buf[:n/2]) // part of the target's data, then nothing
				return
			}
			if fromClient {
				total := k.sent.Add(int64(n))
				if lim := p.cutAfter.Load(); lim > 0 && total > lim {
					to.Write(buf[:n/2]) // part of a PDU, then nothing
					return
				}
			}
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// CutRepliesAfter cuts every current connection once it has forwarded n more bytes
// from the target, in the middle of what the target sent: a link that dies inside a
// read's data.
func (p *faultProxy) CutRepliesAfter(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.links {
		k.replyLeft.Store(n)
		k.replyCut.Store(true)
	}
}

// CutAll closes every forwarded connection at once, like a reset.
func (p *faultProxy) CutAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.links {
		k.close()
	}
}

// StallAll makes every current connection silent; new connections work normally.
func (p *faultProxy) StallAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.links {
		if !k.stall.Load() {
			k.stall.Store(true)
		}
	}
}
