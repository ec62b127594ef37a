package initproc

import (
	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/bootplan"
	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/internal/daemon"
)

// Plan is the boot plan and the daemon configuration PID 1 makes of it.
type Plan struct {
	Boot   *bootplan.Plan
	Daemon daemon.Config // carries Boot.ISCSI
}

// MakePlan plans the boot (bootplan.Make, as `isboot serve --ibft` does) and adds
// what only PID 1 decides: /dev/nbd0, two NBD connections, the debug level.
func MakePlan(c *cmdline.CmdLine, t *ibft.Table) (*Plan, error) {
	bp, err := bootplan.Make(c, t)
	if err != nil {
		return nil, err
	}
	p := &Plan{Boot: bp, Daemon: daemon.Config{
		Config: bp.ISCSI, Paths: bp.Paths, Device: 0, Connections: 2, Debug: c.Debug, IBFT: bp.IBFT,
	}}
	switch {
	case c.NoReadAhead:
		p.Daemon.ReadAheadKB = -1
	case c.ReadAheadKB > 0:
		p.Daemon.ReadAheadKB = c.ReadAheadKB
	}
	return p, nil
}
