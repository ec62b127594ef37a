package nbd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// AttachConfig describes a kernel attachment.
type AttachConfig struct {
	KernelConfig
	// Connections is the number of sockets the kernel spreads requests over (default 1;
	// more than one relies on CAN_MULTI_CONN, which Server always offers).
	Connections int
	// RetryInterval is how often missing connections are re-offered to the kernel
	// when no LINK_DEAD prompts it (default 2 s).
	RetryInterval time.Duration
	// TakeoverWait is how long Attach keeps offering sockets to a device that is
	// still configured before concluding another server owns it (default 10 s).
	TakeoverWait time.Duration
	// MaxSectorsKB is the largest request the kernel sends, in KiB (default 4096,
	// capped by the device's max_hw_sectors_kb and the server's MaxRequest). The nbd
	// driver starts at 128 KiB, which splits a 1 MiB read into eight round trips.
	MaxSectorsKB int
	// ReadAheadKB is the device's read-ahead (default 1024; the driver's is 128).
	ReadAheadKB int
}

// Attachment is a Server attached to /dev/nbdN through socketpairs. It keeps the device
// served: when a socket dies (LINK_DEAD, or our end sees it close) it hands the kernel
// a fresh one with RECONFIGURE. Nothing on that path opens files or resolves names,
// so it keeps working after switch_root.
type Attachment struct {
	srv   *Server
	g     *genl
	watch *linkDeadWatch
	cfg   AttachConfig
	index atomic.Int32 // set by CONNECT while connections may already log

	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	live    atomic.Int32
	kick    chan struct{}
	stop    chan struct{} // ends repairLoop
	stopped atomic.Bool

	reconfigures atomic.Uint64
}

// Attach serves srv on a kernel nbd device. If cfg.Index names a device that is still
// configured (a previous server died and left it waiting), Attach takes it over with
// RECONFIGURE instead of NBD_CMD_CONNECT, so the device and its mounts survive.
func Attach(srv *Server, cfg AttachConfig) (*Attachment, error) {
	if cfg.Connections <= 0 {
		cfg.Connections = 1
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = 2 * time.Second
	}
	if cfg.TakeoverWait <= 0 {
		cfg.TakeoverWait = 10 * time.Second
	}
	if cfg.MaxSectorsKB <= 0 {
		cfg.MaxSectorsKB = 4096
	}
	cfg.MaxSectorsKB = min(cfg.MaxSectorsKB, srv.opts.MaxRequest>>10)
	if cfg.ReadAheadKB <= 0 {
		cfg.ReadAheadKB = 1024
	}
	if cfg.Size == 0 {
		cfg.Size = srv.dev.Size()
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = int(srv.blockSize())
	}
	if cfg.ServerFlags == 0 {
		cfg.ServerFlags = srv.TransmissionFlags()
	}
	g, err := openGenl()
	if err != nil {
		return nil, err
	}
	// Subscribe before connecting so no LINK_DEAD can slip past.
	watch, err := g.watchLinkDead()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Attachment{srv: srv, g: g, watch: watch, cfg: cfg, ctx: ctx, cancel: cancel,
		kick: make(chan struct{}, 1), stop: make(chan struct{})}
	a.index.Store(int32(cfg.Index))

	takeover := false
	if cfg.Index >= 0 {
		st, err := g.status(cfg.Index)
		if err != nil {
			a.abort()
			return nil, err
		}
		takeover = len(st) == 1 && st[0].Connected
	}
	if takeover {
		srv.opts.Logf("nbd: nbd%d is still configured: taking it over with RECONFIGURE", cfg.Index)
		err = a.takeOver()
	} else {
		var fds []int
		if fds, err = a.newSockets(cfg.Connections); err == nil {
			var index int
			index, err = g.connect(cfg.KernelConfig, fds)
			a.index.Store(int32(index))
			closeAll(fds) // the kernel holds its own references now
		}
	}
	if err != nil {
		a.abort()
		return nil, err
	}
	if err := tuneQueue(a.Index(), cfg.MaxSectorsKB, cfg.ReadAheadKB); err != nil {
		srv.opts.Logf("nbd: %v (requests stay small)", err)
	}
	a.wg.Add(2)
	go a.watchLoop()
	go a.repairLoop()
	return a, nil
}

// tuneQueue raises the request size and read-ahead of /dev/nbdN through sysfs. The
// limits belong to the device, so a successor server that takes it over keeps them.
func tuneQueue(index, maxSectorsKB, readAheadKB int) error {
	q := fmt.Sprintf("/sys/block/nbd%d/queue/", index)
	hw, err := os.ReadFile(q + "max_hw_sectors_kb")
	if err != nil {
		return fmt.Errorf("nbd%d: queue limits: %w", index, err)
	}
	if n, err := strconv.Atoi(strings.TrimSpace(string(hw))); err == nil {
		maxSectorsKB = min(maxSectorsKB, n)
	}
	for _, kv := range []struct {
		file string
		kb   int
	}{{"max_sectors_kb", maxSectorsKB}, {"read_ahead_kb", readAheadKB}} {
		if err := os.WriteFile(q+kv.file, []byte(strconv.Itoa(kv.kb)), 0); err != nil {
			return fmt.Errorf("nbd%d: set %s to %d: %w", index, kv.file, kv.kb, err)
		}
	}
	return nil
}

// Index is N of /dev/nbdN.
func (a *Attachment) Index() int { return int(a.index.Load()) }

// Device is the block device name, e.g. "nbd0".
func (a *Attachment) Device() string { return fmt.Sprintf("nbd%d", a.Index()) }

// Live is the number of sockets currently served.
func (a *Attachment) Live() int { return int(a.live.Load()) }

// Reconfigures counts successful RECONFIGURE calls after the initial attach.
func (a *Attachment) Reconfigures() uint64 { return a.reconfigures.Load() }

// newSockets makes n socketpairs, starts serving our ends and returns the kernel ends.
func (a *Attachment) newSockets(n int) ([]int, error) {
	var kernel []int
	for range n {
		pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			closeAll(kernel)
			return nil, fmt.Errorf("nbd: socketpair: %w", err)
		}
		f := os.NewFile(uintptr(pair[0]), "nbd-server")
		c, err := net.FileConn(f) // dups the fd
		f.Close()
		if err != nil {
			unix.Close(pair[1])
			closeAll(kernel)
			return nil, fmt.Errorf("nbd: socketpair conn: %w", err)
		}
		kernel = append(kernel, pair[1])
		a.live.Add(1)
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			err := a.srv.ServeTransmission(a.ctx, c)
			a.live.Add(-1)
			if a.stopped.Load() {
				return
			}
			if err != nil {
				a.srv.opts.Logf("nbd: %s: connection ended: %v", a.Device(), err)
			}
			a.poke()
		}()
	}
	return kernel, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

func (a *Attachment) poke() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func (a *Attachment) watchLoop() {
	defer a.wg.Done()
	for {
		idx, err := a.watch.next()
		if err != nil {
			if !a.stopped.Load() {
				a.srv.opts.Logf("nbd: %s: LINK_DEAD watch: %v", a.Device(), err)
			}
			return
		}
		if idx == a.Index() || idx < 0 {
			a.poke()
		}
	}
}

// offer hands the kernel fresh sockets for the missing connections.
func (a *Attachment) offer() error {
	missing := a.cfg.Connections - a.Live()
	if missing <= 0 {
		return nil
	}
	fds, err := a.newSockets(missing)
	if err != nil {
		return err
	}
	// Sockets only: a refused takeover must not change the owner's settings.
	err = a.g.reconfigure(a.Index(), nil, fds)
	closeAll(fds) // sockets the kernel did not take now read EOF on our end
	return err
}

// takeOver replaces the dead sockets of a device left by a previous server. The kernel
// marks a socket dead only once it notices the old server is gone, so this retries for
// a while; if nothing is taken, the device's sockets are alive: someone serves it.
func (a *Attachment) takeOver() error {
	deadline := time.Now().Add(a.cfg.TakeoverWait)
	for {
		if err := a.offer(); err != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond) // let refused sockets read EOF
		if a.Live() > 0 || time.Now().After(deadline) {
			break
		}
	}
	if a.Live() == 0 {
		return fmt.Errorf("nbd: %s is connected and none of its sockets is dead: another server still serves it", a.Device())
	}
	return a.g.reconfigure(a.Index(), &a.cfg.KernelConfig, nil) // ours now: our timeouts
}

// repairLoop re-offers sockets while fewer than cfg.Connections are live. The kernel
// only takes a socket in place of one it has marked dead, which may happen a moment
// after our end saw the close, so it retries on a timer as well as on LINK_DEAD.
func (a *Attachment) repairLoop() {
	defer a.wg.Done()
	t := time.NewTicker(a.cfg.RetryInterval)
	defer t.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-a.kick:
		case <-t.C:
		}
		if a.Live() >= a.cfg.Connections || a.stopped.Load() {
			continue
		}
		before := a.Live()
		if err := a.offer(); err != nil {
			a.srv.opts.Logf("nbd: %s: %v", a.Device(), err)
			continue
		}
		a.reconfigures.Add(1)
		a.srv.opts.Logf("nbd: %s: offered %d fresh sockets with RECONFIGURE (%d were live)",
			a.Device(), a.cfg.Connections-before, before)
	}
}

// Resize tells the kernel the device now holds size bytes (the LUN grew or shrank;
// the server already serves its new size). It checks the kernel took it: before
// Linux 5.3 the nbd driver ignores a new size.
func (a *Attachment) Resize(size int64) error {
	if err := a.g.resize(a.Index(), size, a.cfg.BlockSize); err != nil {
		return err
	}
	b, err := os.ReadFile(fmt.Sprintf("/sys/block/%s/size", a.Device()))
	if err != nil {
		return nil // nothing to check against
	}
	if sectors, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); sectors != size>>9 {
		return fmt.Errorf("nbd: %s holds %d sectors after the resize to %d bytes: the kernel did not resize it (Linux 5.3 or later does)", a.Device(), sectors, size)
	}
	return nil
}

// Close disconnects the device cleanly: the kernel sends NBD_CMD_DISC on every socket
// and shuts them down. Requests still queued in the kernel fail, so callers unmount or
// sync first. Close waits for the connections to finish and flushes the backend.
func (a *Attachment) Close() error {
	a.halt()
	err := a.g.disconnect(a.Index())
	cut := time.AfterFunc(30*time.Second, a.cancel) // a kernel that never closes its end
	a.wg.Wait()
	cut.Stop()
	a.cancel()
	return errors.Join(err, a.srv.dev.Flush())
}

// Detach stops serving without telling the kernel: the device stays configured and
// waits (up to its dead-connection timeout) for another server to RECONFIGURE it.
func (a *Attachment) Detach() { a.abort() }

// halt stops the repair machinery; connections keep running.
func (a *Attachment) halt() {
	if a.stopped.Swap(true) {
		return
	}
	a.watch.close()
	close(a.stop)
}

func (a *Attachment) abort() {
	a.halt()
	a.cancel()
	a.wg.Wait()
}
