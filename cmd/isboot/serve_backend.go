package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/bootplan"
	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/internal/daemon"
	"github.com/isboot/isboot/internal/status"
	"github.com/isboot/isboot/iscsi"
)

// What `isboot serve` exports: an iSCSI LUN (from flags or an iBFT), an image file, or memory.

// backend is the device serve exports.
type backend struct {
	dev   blockdev.Device
	disk  status.Disk                // what the device says it is, for the status file
	close func() error               // flush and log out
	info  func() *daemon.SessionInfo // the session for the status file; nil when none
}

// openBackend returns the device to serve and how to release it.
func openBackend(ctx context.Context, cfg *serveConfig, logf func(string, ...any)) (*backend, error) {
	switch {
	case cfg.memSize > 0:
		return plainBackend(blockdev.NewMem(cfg.memSize, 512, cfg.readOnly), func() error { return nil }), nil
	case cfg.file != "":
		d, err := blockdev.OpenFile(cfg.file, cfg.readOnly)
		if err != nil {
			return nil, fmt.Errorf("--image: %w", err)
		}
		return plainBackend(d, d.Close), nil
	}
	if cfg.ibftFile != "" {
		if err := cfg.fromIBFT(logf); err != nil {
			return nil, err
		}
	}
	b, err := dialISCSI(ctx, cfg, logf)
	if err == nil && cfg.readOnly {
		b.dev = blockdev.ReadOnly{Device: b.dev}
	}
	return b, err
}

func plainBackend(d blockdev.Device, close func() error) *backend {
	return &backend{dev: d, disk: daemon.DiskOf(d), close: close, info: func() *daemon.SessionInfo { return nil }}
}

// fromIBFT takes the LUN from an iBFT file exactly as the boot does (bootplan.Make).
// Flags given explicitly still win, as the kernel command line does at boot:
// --initiator (rd.iscsi.initiator=), the CHAP flags, the digests.
func (cfg *serveConfig) fromIBFT(logf func(string, ...any)) error {
	t, _, err := ibft.Find(ibft.FindOptions{Source: ibft.SourceFile, File: cfg.ibftFile})
	if err != nil {
		return err
	}
	flags := cfg.iscsi
	p, err := bootplan.Make(&cmdline.CmdLine{Initiator: flags.InitiatorName, Multipath: cfg.multipath}, t)
	if errors.Is(err, bootplan.ErrNoInitiator) {
		return fmt.Errorf("%s: the iBFT names no initiator: give --initiator", cfg.ibftFile)
	}
	if err != nil {
		return err
	}
	for _, n := range p.Notes {
		logf("note: %s", n)
	}
	cfg.iscsi = p.ISCSI
	cfg.ibftKeys = p.IBFT
	if flags.CHAPUser != "" {
		cfg.iscsi.CHAPUser, cfg.iscsi.CHAPSecret = flags.CHAPUser, flags.CHAPSecret
		cfg.iscsi.RevCHAPUser, cfg.iscsi.RevCHAPSecret = flags.RevCHAPUser, flags.RevCHAPSecret
	}
	if flags.HeaderDigest != iscsi.DigestAuto {
		cfg.iscsi.HeaderDigest = flags.HeaderDigest
	}
	if flags.DataDigest != iscsi.DigestAuto {
		cfg.iscsi.DataDigest = flags.DataDigest
	}
	if cfg.multipath {
		if len(p.Paths) < 2 {
			return fmt.Errorf("%s: --paths multipath: the iBFT has one target for the LUN", cfg.ibftFile)
		}
		cfg.paths = p.Paths
		for i := range cfg.paths {
			pa := &cfg.paths[i]
			if flags.CHAPUser != "" {
				pa.CHAPUser, pa.CHAPSecret = flags.CHAPUser, flags.CHAPSecret
				pa.RevCHAPUser, pa.RevCHAPSecret = flags.RevCHAPUser, flags.RevCHAPSecret
			}
			pa.HeaderDigest, pa.DataDigest = cfg.iscsi.HeaderDigest, cfg.iscsi.DataDigest
		}
	}
	return nil
}

// dialMultipath logs in on every path and returns the multipath LUN.
func dialMultipath(ctx context.Context, cfg *serveConfig, logf func(string, ...any)) (*backend, error) {
	paths := slices.Clone(cfg.paths)
	for i := range paths {
		paths[i].Logf = logf
	}
	m, err := iscsi.DialMultipath(ctx, paths)
	if err != nil {
		return nil, err
	}
	logf("logged in to %s LUN %s over %d paths at once: %d bytes, %d-byte blocks", cfg.iscsi.TargetName, cfg.iscsi.LUNString(),
		len(paths), m.Size(), m.BlockSize())
	return &backend{
		dev:   m,
		disk:  daemon.DiskOf(m),
		close: func() error { return errors.Join(m.Flush(), m.Close()) },
		info: func() *daemon.SessionInfo {
			info := daemon.MultipathInfo(m)
			return &info
		},
	}, nil
}

// dialISCSI logs into the target and returns its LUN; closing flushes and logs out.
func dialISCSI(ctx context.Context, cfg *serveConfig, logf func(string, ...any)) (*backend, error) {
	if cfg.multipath {
		return dialMultipath(ctx, cfg, logf)
	}
	c := cfg.iscsi
	c.Logf = logf
	s, err := iscsi.Dial(ctx, c)
	if err != nil {
		return nil, err
	}
	lun := s.LUN()
	logf("logged in to %s LUN %s at %s: %d bytes, %d-byte blocks", c.TargetName, c.LUNString(),
		strings.Join(c.Portals, ","), lun.Size(), lun.BlockSize())
	return &backend{
		dev:   lun,
		disk:  daemon.DiskOf(lun),
		close: func() error { return errors.Join(lun.Flush(), s.Close()) },
		info: func() *daemon.SessionInfo {
			info := daemon.ISCSIInfo(s)
			return &info
		},
	}, nil
}
