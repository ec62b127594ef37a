// Package daemon is isboot's serving daemon: it logs into the iSCSI target, attaches
// the LUN to a kernel NBD device and keeps it served for the life of the system,
// through switch_root, reconnects and systemd's shutdown.
//
// PID 1 starts it as a child named "@isboot" (see Start): the '@' tells systemd this
// process backs the root filesystem, so its killing spree at shutdown spares it. The
// configuration, secrets included, arrives over an inherited pipe, never in argv or
// the environment, and the daemon reports its progress back over a second pipe.
package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/isboot/isboot/internal/netguard"
	"github.com/isboot/isboot/internal/status"
	"github.com/isboot/isboot/iscsi"
	"github.com/isboot/isboot/netcfg"
)

// Argv0 is the name the daemon runs under.
const Argv0 = "@isboot"

// Config is everything the daemon needs; it is sent to the child as JSON. Its String
// (iscsi.Config's) shows no secret.
type Config struct {
	// iscsi.Config is the LUN: portals (the first is tried first), target, initiator,
	// LUN, CHAP, digests (offered, the target decides). The daemon sets Logf and ISID.
	iscsi.Config

	// Paths, when it holds two or more, serves the LUN over all of them at once
	// (iscsi.Multipath, active-active), each with its own portal and CHAP; the
	// embedded Config is then the first. Empty: one session, failing over between
	// the embedded Config's portals.
	Paths []iscsi.Config `json:",omitempty"`

	Device      int // N of /dev/nbdN; -1 lets the kernel pick
	Connections int // NBD sockets (the iSCSI session is shared)
	// ReadAheadKB is the largest read fetched ahead of a sequential reader
	// (blockdev.ReadAhead): 0 is the default (1 MiB), negative turns it off.
	ReadAheadKB int `json:",omitempty"`

	StatusDir string // "" disables the status file
	NIC       string // interface carrying the session, for the status file
	// Guard is the boot NIC as the boot configured it, which the daemon keeps so
	// (netguard.Watch); nil: no guard.
	Guard *netguard.Spec `json:",omitempty"`
	IBFT  []status.KV    // hw.ibft.* lines, secrets masked
	// Lease is the boot NIC's DHCP lease (ip=dhcp, ip=dhcp6, an iBFT DHCP address):
	// the serving process renews it for the life of the system. nil: static.
	Lease   *netcfg.Lease `json:",omitempty"`
	Debug   int
	Version string

	// Root is a directory in which the daemon builds a root of its own from RAM
	// filesystems (proc, sys, dev, the status directory and a link to its own
	// executable) and chroots into it, before switch_root, so that nothing it does
	// by path reaches the root filesystem it serves, and a serving process started
	// after switch_root finds everything it needs. "" keeps the current root.
	Root string `json:",omitempty"`

	// EmptyInitramfs has the supervisor delete the files of the root it started in
	// (PID 1's initramfs) once PID 1 has exec'd the real init, instead of PID 1 doing
	// it before: a tenth of a second less before the real init, and done when the
	// CPU is otherwise idle. Only PID 1 sets it: a host initramfs keeps its files.
	EmptyInitramfs bool `json:",omitempty"`

	// Set by the supervisor for each serving process it starts: its own pid and how
	// many serving processes it restarted before this one (for the status file).
	Supervisor int    `json:",omitempty"`
	Restarts   uint64 `json:",omitempty"`
}

func (c *Config) encode(w io.Writer) error {
	return json.NewEncoder(w).Encode(c)
}

// errNoConfig means PID 1 gave up before it had anything for the daemon to serve.
var errNoConfig = errors.New("daemon: no configuration: nothing to serve")

func decodeConfig(r io.Reader) (*Config, error) {
	var c Config
	if err := json.NewDecoder(r).Decode(&c); err == io.EOF {
		return nil, errNoConfig
	} else if err != nil {
		return nil, fmt.Errorf("daemon: config: %w", err)
	}
	if len(c.Portals) == 0 || c.TargetName == "" {
		return nil, fmt.Errorf("daemon: config: no portal or target")
	}
	return &c, nil
}
