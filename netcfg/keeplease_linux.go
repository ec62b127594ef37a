package netcfg

import (
	"context"
	"time"

	"github.com/vishvananda/netns"
)

// KeepOptions tune KeepLease.
type KeepOptions struct {
	Namespace *netns.NsHandle                  // where the lease's link is; nil: here
	Logf      func(format string, args ...any) // renewals and warnings; nil: silent
	Report    func(LeaseState)                 // after every step; nil: nobody listens
	// Timeout bounds one exchange; zero: a quarter of the lease, from 1 s to 10 s.
	Timeout time.Duration
	// ConfirmAfter is when an unconfirmed lease (UnconfirmedLease: an iBFT DHCP
	// address) is first confirmed; zero: DefaultConfirmAfter. The firmware got the
	// lease moments before the boot, and the boot's CPU is better spent on the boot.
	ConfirmAfter time.Duration
}

// DefaultConfirmAfter is KeepOptions.ConfirmAfter's default.
const DefaultConfirmAfter = 30 * time.Second

// KeepLease renews l until ctx ends: from its server at T1, from any server at T2
// (rebinding), and on after the lease ran out. A lost lease never removes the
// address: the root's disk is behind it, and the address was configured without a
// lifetime, so the kernel keeps it too. It only warns, and keeps asking.
//
// It opens nothing by path (packet and UDP sockets only), so the daemon can run it
// after switch_root, from a root of its own.
func KeepLease(ctx context.Context, l Lease, o KeepOptions) {
	logf, report := o.Logf, o.Report
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if report == nil {
		report = func(LeaseState) {}
	}
	renew := renew4
	if l.Family == 6 {
		renew = renew6
	}
	if len(l.Reply) == 0 {
		confirmed, ok := confirmLease(ctx, l, o, logf, report)
		if !ok {
			return
		}
		l = confirmed
	}
	l.times()
	st := LeaseState{Lease: l, State: "bound"}
	report(st)
	next := l.Obtained.Add(l.T1)
	for {
		if !sleepUntil(ctx, next) {
			return
		}
		now := time.Now()
		rebind := !now.Before(l.Obtained.Add(l.T2))
		expired := !now.Before(l.Expires())
		switch {
		case expired && st.State != "expired":
			logf("dhcp: warning: the lease of %s on %s expired at %s; keeping the address, still asking",
				l.Addr, l.Link, l.Expires().UTC().Format(time.RFC3339))
			st.State = "expired"
		case expired:
		case rebind:
			st.State = "rebinding"
		default:
			st.State = "renewing"
		}
		timeout := o.Timeout
		if timeout <= 0 {
			timeout = min(max(l.Duration/4, time.Second), 10*time.Second)
		}
		nl, err := renew(ctx, o.Namespace, &l, rebind, timeout)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			l = *nl
			st.Lease, st.State, st.LastError = l, "bound", ""
			st.Renewals++
			logf("dhcp: renewed %s", &l)
			report(st)
			next = l.Obtained.Add(l.T1)
			continue
		}
		st.Failures++
		st.LastError = err.Error()
		logf("dhcp: warning: %s on %s, %s: no renewal: %v", l.Addr, l.Link, st.State, err)
		report(st)
		next = time.Now().Add(retryAfter(l, time.Now()))
	}
}

// confirmLease waits ConfirmAfter, then asks until a server acknowledges l's address
// (every minute at most); false when ctx ended first.
func confirmLease(ctx context.Context, l Lease, o KeepOptions, logf func(string, ...any), report func(LeaseState)) (Lease, bool) {
	st := LeaseState{Lease: l, State: "unconfirmed"}
	report(st)
	wait := o.ConfirmAfter
	if wait <= 0 {
		wait = DefaultConfirmAfter
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultDHCPTimeout
	}
	for backoff := time.Second; ; backoff = min(2*backoff, time.Minute) {
		if !sleepUntil(ctx, time.Now().Add(wait)) {
			return l, false
		}
		nl, err := confirm4(ctx, o.Namespace, l, "", timeout)
		if ctx.Err() != nil {
			return l, false
		}
		if err == nil {
			logf("dhcp: confirmed %s", nl)
			return *nl, true
		}
		st.Failures++
		st.LastError = err.Error()
		logf("dhcp: warning: %s on %s: not confirmed: %v; keeping the address", l.Addr, l.Link, err)
		report(st)
		wait = backoff
	}
}

// retryAfter is how long to wait after a failed attempt: half the time left to the
// next deadline (T2, then the lease's end), as RFC 2131 4.4.5 suggests, but at
// least an eighth of the lease (250 ms to 60 s); after the end, that floor.
func retryAfter(l Lease, now time.Time) time.Duration {
	floor := min(max(l.Duration/8, 250*time.Millisecond), time.Minute)
	deadline := l.Obtained.Add(l.T2)
	if !now.Before(deadline) {
		deadline = l.Expires()
	}
	return max(deadline.Sub(now)/2, floor)
}

// sleepUntil waits until t; false when ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}
