package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/daemon"
	"github.com/isboot/isboot/internal/nbd"
	"github.com/isboot/isboot/internal/status"
)

// Running `isboot serve`: the listener or kernel attach, and the status it publishes.

// serve opens the backend and exposes it until ctx is done, publishing its status
// as the boot daemon does (daemon.Publisher).
func serve(ctx context.Context, cfg *serveConfig, logf func(string, ...any)) (err error) {
	daemon.LimitProcs(1)
	st := status.Status{Version: Version, PID: os.Getpid(), State: status.Configuring, Target: cfg.iscsi.TargetName}
	if cfg.file == "" && cfg.memSize == 0 {
		st.State = status.LoggingIn
	}
	pub := daemon.NewPublisher(cfg.statusPath(logf), st, 0, logf)
	defer pub.Close()
	defer func() {
		if err != nil {
			pub.Failed(err)
		} else {
			pub.Stopped()
		}
	}()
	b, err := openBackend(ctx, cfg, logf)
	if err != nil {
		return err
	}
	defer func() {
		if err := b.close(); err != nil {
			logf("close backend: %v", err)
		}
	}()
	dev := b.dev
	pub.Update(func(st *status.Status) {
		st.Target, st.LUN, st.LUNName = cfg.iscsi.TargetName, cfg.iscsi.LUN, cfg.iscsi.LUNString()
		st.IBFT, st.Size = cfg.ibftKeys, dev.Size()
		st.Disk = b.disk
		if len(cfg.iscsi.Portals) > 0 {
			st.Portal = cfg.iscsi.Portals[0]
		}
	})
	if cfg.readAheadKB > 0 {
		dev = blockdev.NewReadAhead(dev, min(blockdev.DefaultReadAheadMin, cfg.readAheadKB<<10), cfg.readAheadKB<<10)
	}
	srv := nbd.NewServer(dev, nbd.Options{ExportName: cfg.iscsi.TargetName, Logf: logf})
	var att *nbd.Attachment
	sample := func() daemon.Sample {
		s := daemon.Sample{Session: b.info(), NBD: srv.Stats(), ReadAhead: blockdev.ReadAheadStatsOf(dev)}
		if att != nil {
			s.Attached, s.Live, s.Reconfigures = true, att.Live(), att.Reconfigures()
		}
		return s
	}
	if cfg.listen != "" {
		l, err := listen(cfg.listen)
		if err != nil {
			return err
		}
		if l.Addr().Network() == "tcp" {
			// NBD has no authentication here (no TLS, no names checked): the
			// socket's reach is the LUN's protection.
			logf("warning: NBD on tcp:%s has no authentication: whoever reaches it reads and writes the LUN", l.Addr())
		}
		logf("serving %d bytes on %s", dev.Size(), cfg.listen)
		pub.Observe(sample(), true)
		fctx, stopFollow := context.WithCancel(ctx)
		followed := make(chan struct{})
		go func() { pub.Follow(fctx, sample); close(followed) }()
		err = srv.Serve(ctx, l)
		stopFollow()
		<-followed
		if err != nil {
			return err
		}
		return dev.Flush()
	}
	att, err = nbd.Attach(srv, nbd.AttachConfig{KernelConfig: cfg.kernel, Connections: cfg.connections})
	if err != nil {
		return err
	}
	logf("serving /dev/%s (%d bytes, %d connections)", att.Device(), dev.Size(), cfg.connections)
	pub.Update(func(st *status.Status) { st.Device = att.Device() })
	pub.Observe(sample(), true)
	pub.Follow(ctx, sample)
	logf("disconnecting /dev/%s", att.Device())
	return att.Close()
}

// statusPath is where serve publishes its status: --status, except that the default
// path is left alone while another live server (the boot daemon of this very system,
// say) publishes there.
func (cfg *serveConfig) statusPath(logf func(string, ...any)) string {
	if cfg.status == "" || cfg.statusGiven {
		return cfg.status
	}
	kv, err := status.ReadFile(cfg.status)
	if err != nil {
		return cfg.status
	}
	pid, _ := strconv.Atoi(status.Value(kv, "net.isboot.pid"))
	alive := pid > 0 && pid != os.Getpid() && syscall.Kill(pid, 0) != syscall.ESRCH
	if alive && status.Value(kv, "net.isboot.state") != string(status.Failed) {
		logf("warning: %s is pid %d's, which is serving: no status file (give --status PATH)", cfg.status, pid)
		return ""
	}
	return cfg.status
}

func listen(spec string) (net.Listener, error) {
	network, addr, ok := strings.Cut(spec, ":")
	switch {
	case ok && network == "unix":
		if fi, err := os.Stat(addr); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(addr) // a stale socket from an earlier run
		}
	case ok && network == "tcp":
	default:
		return nil, fmt.Errorf("--listen %q: want unix:PATH or tcp:HOST:PORT", spec)
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	return l, nil
}
