package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/nbd"
	"github.com/isboot/isboot/internal/status"
	"github.com/isboot/isboot/netcfg"
)

// Session is a logged-in LUN, as the daemon needs it.
type Session interface {
	// LUN is the block device the NBD server exports.
	LUN() blockdev.Device
	// Info describes the session for the status file.
	Info() SessionInfo
	// Logout ends the session (after the last flush).
	Logout(ctx context.Context) error
	// Idle logs out but keeps the session usable: the next command logs in again.
	Idle(ctx context.Context) error
}

// SessionInfo is the iSCSI side of the status file.
type SessionInfo struct {
	ISID       string
	TSIH       uint16
	Portal     string // the portal in use
	Params     []status.KV
	Reconnects uint64
	Errors     uint64 // iSCSI-level errors
	Recovering bool   // the session is down and being re-established
	Idle       bool   // logged out on purpose (Session.Idle) until the next command
	LastError  string
	Paths      []status.Path // a multipath LUN's paths; nil for one session
}

// Dialer logs in. A permanent failure (refused credentials, no such target) wraps
// ErrPermanent: retrying cannot fix it, so the boot should stop and say so.
type Dialer func(ctx context.Context, cfg *Config, logf func(string, ...any)) (Session, error)

// ErrPermanent marks login failures that retrying will not fix.
var ErrPermanent = errors.New("permanent")

// Options are Run's side effects; tests replace them.
type Options struct {
	Dial Dialer
	// Attach connects the NBD server to a kernel device; nil: nbd.Attach.
	Attach func(*nbd.Server, nbd.AttachConfig) (Attachment, error)
	Logf   func(format string, args ...any)
	// Report hears the boot-time events (ready, retry, fatal); nil: nobody listens.
	Report func(Event)
	// StatusInterval is how often the status file is rewritten while serving (5 s);
	// a change of state or counters is written within a second anyway.
	StatusInterval time.Duration
	// Signals delivers SIGTERM/SIGINT; nil: none.
	Signals <-chan os.Signal
	// InUse reports whether the kernel still needs the device (mounted, open
	// exclusively); a shutdown request is ignored while it does. nil: never in use.
	InUse func(device string) bool
	// MaxBackoff caps the wait between login attempts (30 s).
	MaxBackoff time.Duration
	// Pid is written to the status file (default os.Getpid()).
	Pid int
	// KeepLease renews Config.Lease until its context ends; nil: netcfg.KeepLease.
	KeepLease func(context.Context, netcfg.Lease, netcfg.KeepOptions)
	// FollowQueue sets the process's priority from the kernel's queue on the
	// device (queuePriority): for the serving process, which is alone in it.
	FollowQueue bool
}

// Attachment is what Run needs of an attached kernel device (nbd.Attachment).
type Attachment interface {
	Device() string
	Reconfigures() uint64
	Live() int
	Resize(size int64) error
	Close() error
}

type daemon struct {
	cfg *Config
	o   Options
	pub *Publisher

	loginErrors uint64 // failed logins, counted with the NBD errors
}

// Run serves cfg until ctx ends or a shutdown is accepted, then flushes and logs out.
// It returns nil after a clean stop.
func Run(ctx context.Context, cfg *Config, o Options) error {
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.Report == nil {
		o.Report = func(Event) {}
	}
	if o.Attach == nil {
		o.Attach = func(s *nbd.Server, c nbd.AttachConfig) (Attachment, error) { return nbd.Attach(s, c) }
	}
	if o.StatusInterval <= 0 {
		o.StatusInterval = 5 * time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.Pid == 0 {
		o.Pid = os.Getpid()
	}
	if o.Dial == nil {
		return errors.New("daemon: no dialer")
	}
	st := status.Status{
		Version: cfg.Version, PID: o.Pid, Supervisor: cfg.Supervisor, Restarts: cfg.Restarts, NIC: cfg.NIC, Debug: cfg.Debug, Target: cfg.TargetName,
		LUN: cfg.LUN, LUNName: cfg.LUNString(), IBFT: cfg.IBFT, State: status.LoggingIn,
	}
	if len(cfg.Portals) > 0 {
		st.Portal = cfg.Portals[0]
	}
	statusPath := ""
	if cfg.StatusDir != "" {
		statusPath = filepath.Join(cfg.StatusDir, "status")
	}
	if cfg.Guard != nil {
		st.Guard.Link = cfg.Guard.Link
	}
	d := &daemon{cfg: cfg, o: o, pub: NewPublisher(statusPath, st, o.StatusInterval, o.Logf)}
	defer d.pub.Close()
	// The network must hold from the first login on: guard it before.
	gctx, stopGuard := context.WithCancel(ctx)
	defer stopGuard()
	d.guard(gctx)
	if cfg.Lease != nil {
		stop := d.keepLease(ctx, *cfg.Lease)
		defer stop()
	}

	sess, err := d.loginOrStop(ctx)
	if err == errStoppedEarly {
		return nil
	}
	if err != nil {
		return err
	}
	lun := sess.LUN()
	nopts := nbd.Options{ExportName: cfg.TargetName, Logf: o.Logf}
	if o.FollowQueue {
		nopts.Depth = (&queuePriority{logf: o.Logf}).depth
	}
	srv := nbd.NewServer(readAhead(lun, cfg.ReadAheadKB), nopts)
	att, err := o.Attach(srv, nbd.AttachConfig{
		KernelConfig: nbd.KernelConfig{
			Index: cfg.Device,
			// No request timeout: a root device waits for the target, however long.
			Timeout: 0,
			// Requests wait this long for fresh sockets when every one died.
			DeadConnTimeout: 24 * time.Hour,
		},
		Connections: max(cfg.Connections, 1),
	})
	if err != nil {
		err = fmt.Errorf("daemon: attach NBD: %w", err)
		d.fail(err)
		_ = sess.Logout(context.Background())
		return err
	}
	d.pub.Update(func(st *status.Status) {
		st.State, st.Device, st.Size, st.LastError = status.Serving, att.Device(), lun.Size(), ""
		st.Disk = DiskOf(lun)
	})
	d.refresh(sess, srv, att, true)
	o.Logf("serving %s (%d MiB) on /dev/%s", cfg.TargetName, lun.Size()>>20, att.Device())
	o.Report(Event{EventReady, att.Device()})

	tick := time.NewTicker(d.pub.Tick())
	defer tick.Stop()
	capacity := capacityChanges(sess)
	for {
		select {
		case <-ctx.Done():
			return d.stop(sess, att)
		case <-tick.C:
			d.refresh(sess, srv, att, false)
		case <-capacity:
			d.resize(lun, att)
		case sig := <-o.Signals:
			if sig == FinalSignal {
				if d.final(sess, att) {
					return d.stop(sess, att)
				}
				continue
			}
			if o.InUse != nil && o.InUse(att.Device()) {
				o.Logf("%v: /dev/%s is still in use: serving on", sig, att.Device())
				continue
			}
			o.Logf("%v: /dev/%s is no longer in use: stopping", sig, att.Device())
			return d.stop(sess, att)
		}
	}
}

// keepLease renews the boot NIC's lease in the background, from the start (the
// network must stay while the login waits too) until Run ends, and publishes it.
func (d *daemon) keepLease(ctx context.Context, l netcfg.Lease) (stop func()) {
	keep := d.o.KeepLease
	if keep == nil {
		keep = netcfg.KeepLease
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		keep(ctx, l, netcfg.KeepOptions{Logf: d.o.Logf, Report: func(s netcfg.LeaseState) {
			d.pub.Update(func(st *status.Status) {
				st.DHCP = &status.DHCP{
					Address: s.Lease.Addr.String(), Server: s.Lease.ServerName(), State: s.State,
					LeaseTime: s.Lease.Duration, Obtained: s.Lease.Obtained, Expires: s.Lease.Expires(),
					Renewals: s.Renewals, Failures: s.Failures, LastError: s.LastError,
				}
			})
		}})
	}()
	return func() { cancel(); <-done }
}

// login dials until it succeeds, backing off up to MaxBackoff. Only ctx or a
// permanent error ends it.
func (d *daemon) login(ctx context.Context) (Session, error) {
	backoff := time.Second
	// One limiter for the session's whole life: it also hears the reconnects.
	initiatorLog := limitLog(d.o.Logf, "initiator", 10, time.Minute, time.Now)
	for attempt := 1; ; attempt++ {
		d.o.Logf("logging in to %s (attempt %d)", d.cfg, attempt)
		sess, err := d.o.Dial(ctx, d.cfg, initiatorLog)
		if err == nil {
			return sess, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		d.loginErrors++
		d.pub.Update(func(st *status.Status) {
			st.LastError = err.Error()
			st.Counters.Errors = d.loginErrors
		})
		if errors.Is(err, ErrPermanent) {
			d.fail(err)
			return nil, err
		}
		d.o.Logf("login failed: %v; retrying in %v", err, backoff)
		d.o.Report(Event{EventRetry, err.Error()})
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, d.o.MaxBackoff)
	}
}

// loginOrStop is login, given up when SIGTERM or SIGINT comes first: nothing is
// served yet, so there is nothing to hand back (a reboot from the rescue path, or
// `isboot stop`, need not wait for a target that does not answer).
func (d *daemon) loginOrStop(ctx context.Context) (Session, error) {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		s   Session
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := d.login(lctx)
		done <- result{s, err}
	}()
	for {
		select {
		case r := <-done:
			return r.s, r.err
		case sig := <-d.o.Signals:
			if !isStop(sig) {
				continue
			}
			cancel()
			if r := <-done; r.err == nil {
				lctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				r.s.Logout(lctx)
				cancel()
			}
			d.o.Logf("%v while logging in: stopped", sig)
			d.pub.Stopped()
			return nil, errStoppedEarly
		}
	}
}

var errStoppedEarly = errors.New("daemon: stopped while logging in")

// isStop reports a signal that asks the daemon to stop (ShutdownSignals).
func isStop(sig os.Signal) bool {
	for _, s := range ShutdownSignals {
		if sig == s {
			return true
		}
	}
	return false
}

func (d *daemon) fail(err error) {
	d.pub.Failed(err)
	d.o.Logf("%v", err)
	d.o.Report(Event{EventFatal, err.Error()})
}

// refresh publishes the session's and the device's counters (Publisher.Observe).
func (d *daemon) refresh(sess Session, srv *nbd.Server, att Attachment, force bool) {
	info := sess.Info()
	d.pub.Observe(Sample{
		Session: &info, NBD: srv.Stats(), Attached: true, Live: att.Live(),
		Reconfigures: att.Reconfigures(), LoginErrors: d.loginErrors,
		ReadAhead: blockdev.ReadAheadStatsOf(srv.Device()),
	}, force)
}

// stopError is an error on the way out of a requested stop: the daemon ended on
// purpose, so its supervisor starts no other.
type stopError struct{ error }

func (e stopError) Unwrap() error { return e.error }

// stop disconnects the device (the kernel flushes and sends DISC), then logs out.
func (d *daemon) stop(sess Session, att Attachment) error {
	err := att.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = errors.Join(err, sess.Logout(ctx))
	d.pub.Stopped()
	if err != nil {
		d.o.Logf("stop: %v", err)
		return stopError{fmt.Errorf("daemon: stop: %w", err)}
	}
	d.o.Logf("stopped: /dev/%s disconnected, logged out", att.Device())
	return nil
}

// ShutdownSignals are the signals that ask the daemon to stop.
var ShutdownSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT}

// readAhead wraps the LUN for the NBD server so that a sequential reader finds its
// next read already fetched (blockdev.ReadAhead). kb: 0 default, negative off.
func readAhead(lun blockdev.Device, kb int) blockdev.Device {
	switch {
	case kb < 0:
		return lun
	case kb == 0:
		return blockdev.NewReadAhead(lun, blockdev.DefaultReadAheadMin, blockdev.DefaultReadAheadMax)
	}
	return blockdev.NewReadAhead(lun, min(blockdev.DefaultReadAheadMin, kb<<10), kb<<10)
}
