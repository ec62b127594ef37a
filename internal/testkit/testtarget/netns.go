package testtarget

import (
	"fmt"
	"net"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
)

// waitListeningIn is waitListening from inside the named network namespace ns
// ("": this one).
func waitListeningIn(ns, addr string, d time.Duration) error {
	if ns == "" {
		return waitListening(addr, d)
	}
	deadline := time.Now().Add(d)
	for {
		c, err := dialIn(ns, addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s in netns %s not listening after %v: %v", addr, ns, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dialIn connects to addr over TCP from the named network namespace ns. The socket
// keeps its namespace, so the connection can be used from anywhere.
func dialIn(ns, addr string, timeout time.Duration) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread never leaves the namespace: it stays locked and ends with the
		// goroutine, so no other goroutine runs on it.
		runtime.LockOSThread()
		h, err := netns.GetFromName(ns)
		if err != nil {
			ch <- result{nil, fmt.Errorf("netns %s: %w", ns, err)}
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			ch <- result{nil, fmt.Errorf("enter netns %s: %w", ns, err)}
			return
		}
		c, err := net.DialTimeout("tcp", addr, timeout)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}
