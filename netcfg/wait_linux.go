package netcfg

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func (ap *applier) waitCarrier(l netlink.Link) error {
	name, idx := l.Attrs().Name, l.Attrs().Index
	timeout := ap.timeout(ap.o.CarrierTimeout, DefaultCarrierTimeout)
	err := waitFor(ap.ctx, timeout, ap.subscribeLinks,
		func() (bool, error) {
			cur, err := ap.h.LinkByIndex(idx)
			if err != nil {
				return false, err
			}
			return cur.Attrs().RawFlags&unix.IFF_LOWER_UP != 0, nil
		},
		func() error {
			ap.logf("netcfg: waiting up to %v for carrier on %s", timeout, name)
			return nil
		})
	if err != nil {
		return fmt.Errorf("netcfg: %s: waiting for carrier: %w", name, err)
	}
	return nil
}

// waitDAD waits until the kernel has finished duplicate address detection for our
// IPv6 address: until then it cannot be used as a source.
func (ap *applier) waitDAD(l netlink.Link) error {
	ip, name := ap.p.Addr.Addr(), l.Attrs().Name
	timeout := ap.timeout(ap.o.DADTimeout, DefaultDADTimeout)
	err := waitFor(ap.ctx, timeout, ap.subscribeAddrs,
		func() (bool, error) {
			addrs, err := ap.h.AddrList(l, unix.AF_INET6)
			if err != nil {
				return false, err
			}
			for _, a := range addrs {
				if !a.IP.Equal(ip.AsSlice()) {
					continue
				}
				if a.Flags&unix.IFA_F_DADFAILED != 0 {
					return false, fmt.Errorf("another host on the link already uses %s", ip)
				}
				return a.Flags&unix.IFA_F_TENTATIVE == 0, nil
			}
			return false, fmt.Errorf("%s disappeared from %s", ip, name)
		},
		func() error {
			ap.logf("netcfg: waiting up to %v for duplicate address detection of %s on %s", timeout, ip, name)
			return nil
		})
	if err != nil {
		return fmt.Errorf("netcfg: %s: duplicate address detection for %s: %w", name, ip, err)
	}
	return nil
}

// waitSLAAC waits until the kernel has configured a usable IPv6 address of more than
// link scope on l from router advertisements. Not getting one is no failure: the
// login then reports what the network lacks, and may yet succeed on a later try.
func (ap *applier) waitSLAAC(l netlink.Link) {
	name := l.Attrs().Name
	timeout := ap.timeout(ap.o.SLAACTimeout, DefaultSLAACTimeout)
	var got netip.Addr
	err := waitFor(ap.ctx, timeout, ap.subscribeAddrs,
		func() (bool, error) {
			addrs, err := ap.h.AddrList(l, unix.AF_INET6)
			if err != nil {
				return false, err
			}
			for _, a := range addrs {
				if a.Scope == unix.RT_SCOPE_LINK || a.Scope == unix.RT_SCOPE_HOST ||
					a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
					continue
				}
				got, _ = netip.AddrFromSlice(a.IP)
				return true, nil
			}
			return false, nil
		},
		func() error {
			ap.logf("netcfg: waiting up to %v for an IPv6 address from router advertisements on %s", timeout, name)
			return nil
		})
	if err != nil {
		ap.logf("netcfg: warning: %s: no IPv6 address from router advertisements: %v", name, err)
		return
	}
	ap.logf("netcfg: %s has %s from router advertisements", name, got)
}

func (ap *applier) timeout(set, def time.Duration) time.Duration {
	if set > 0 {
		return set
	}
	return def
}

func (ap *applier) subscribeLinks(done chan struct{}) (<-chan struct{}, error) {
	ch := make(chan netlink.LinkUpdate, 64)
	err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{Namespace: ap.o.Namespace})
	return wakeups(ch, done), err
}

func (ap *applier) subscribeAddrs(done chan struct{}) (<-chan struct{}, error) {
	ch := make(chan netlink.AddrUpdate, 64)
	err := netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{Namespace: ap.o.Namespace})
	return wakeups(ch, done), err
}

// wakeups turns a stream of netlink updates into "something changed" signals; the
// waiter re-reads the state it cares about, which keeps it simple and race-free. It
// drains the update channel until the subscription closes it.
func wakeups[U any](updates <-chan U, done <-chan struct{}) <-chan struct{} {
	wake := make(chan struct{}, 1)
	go func() {
		defer close(wake)
		for range updates {
			select {
			case wake <- struct{}{}:
			default:
			case <-done:
			}
		}
	}()
	return wake
}

// waitFor waits until check reports true, re-checking whenever the kernel reports a
// change, for at most timeout. It subscribes before the first check (and before
// trigger, which starts whatever should make check true) so no change is missed.
// trigger runs only when the first check fails.
func waitFor(ctx context.Context, timeout time.Duration, subscribe func(done chan struct{}) (<-chan struct{}, error),
	check func() (bool, error), trigger func() error) error {
	done := make(chan struct{})
	defer close(done)
	wake, err := subscribe(done)
	if err != nil {
		return fmt.Errorf("netlink subscribe: %w", err)
	}
	if ok, err := check(); ok || err != nil {
		return err
	}
	if err := trigger(); err != nil {
		return err
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		if ok, err := check(); ok || err != nil {
			return err
		}
		select {
		case _, open := <-wake:
			if !open {
				return errors.New("netlink subscription ended")
			}
		case <-timer.C:
			return fmt.Errorf("gave up after %v", timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
