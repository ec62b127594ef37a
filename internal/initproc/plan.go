package initproc

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/internal/daemon"
	"github.com/isboot/isboot/internal/status"
)

const defaultPort = 3260

// Plan is what the boot will do, decided before anything is touched.
type Plan struct {
	Daemon  daemon.Config
	NIC     int          // iBFT NIC index to configure
	Targets []netip.Addr // command-line target addresses the network must route to; nil: the iBFT's
	Notes   []string     // fallbacks taken and overrides applied, for the log
}

// MakePlan merges the iBFT (t, possibly nil) with the command line, which wins:
// netroot= replaces the target (and its CHAP), rd.iscsi.initiator= the initiator name.
func MakePlan(c *cmdline.CmdLine, t *ibft.Table) (*Plan, error) {
	p := &Plan{NIC: -1}
	d := &p.Daemon
	d.Device = 0
	d.Connections = 2
	d.Debug = c.Debug

	var choice ibft.Choice
	if t != nil {
		var err error
		choice, err = t.BootChoice()
		if err != nil && c.Netroot == nil {
			return nil, err
		}
		if err == nil {
			p.NIC = choice.NIC.Index
			p.Notes = append(p.Notes, choice.Notes...)
		}
		for _, kv := range t.Keys(false) {
			d.IBFT = append(d.IBFT, status.KV{Key: kv.Key, Value: kv.Value})
		}
	}

	switch n := c.Netroot; {
	case n != nil:
		port := int(n.Port)
		if port == 0 {
			port = defaultPort
		}
		d.Portals = []string{net.JoinHostPort(n.Server, strconv.Itoa(port))}
		d.Target, d.LUN = n.Target, n.LUN
		d.CHAPUser, d.CHAPSecret, d.RevCHAPUser, d.RevCHAPSecret = n.User, n.Secret, n.RevUser, n.RevSecret
		if a, err := netip.ParseAddr(n.Server); err == nil {
			p.Targets = []netip.Addr{a}
		}
		p.Notes = append(p.Notes, "netroot= on the command line replaces the iBFT target: "+n.String())
	case t != nil:
		tg := choice.Target
		if !tg.IP.IsValid() || tg.IP.IsUnspecified() {
			return nil, fmt.Errorf("ibft: target%d has no address (use netroot= to give one)", tg.Index)
		}
		if tg.Name == "" {
			return nil, fmt.Errorf("ibft: target%d has no name (use netroot= to give one)", tg.Index)
		}
		d.Portals = []string{portal(tg)}
		// The other valid targets naming the same LUN are paths to it: the initiator
		// fails over to them in turn (iBFT target0, then target1).
		for _, o := range t.Targets {
			if o.Index != tg.Index && o.Flags&ibft.FlagValid != 0 && o.Name == tg.Name && o.LUN == tg.LUN &&
				o.IP.IsValid() && !o.IP.IsUnspecified() && !slices.Contains(d.Portals, portal(o)) {
				d.Portals = append(d.Portals, portal(o))
				p.Notes = append(p.Notes, fmt.Sprintf("target%d (%s) is another path to the LUN", o.Index, portal(o)))
			}
		}
		d.Target, d.LUN = tg.Name, tg.LUN
		if tg.CHAPType >= ibft.CHAPOneWay {
			d.CHAPUser, d.CHAPSecret = tg.CHAPName, tg.CHAPSecret
		}
		if tg.CHAPType >= ibft.CHAPMutual {
			d.RevCHAPUser, d.RevCHAPSecret = tg.RevCHAPName, tg.RevCHAPSecret
		}
	default:
		return nil, errors.New("no iBFT found and no netroot= on the kernel command line: nothing to boot from")
	}

	switch {
	case c.Initiator != "":
		d.Initiator = c.Initiator
		if t != nil && t.Initiator.Name != "" && t.Initiator.Name != c.Initiator {
			p.Notes = append(p.Notes, "rd.iscsi.initiator= replaces the iBFT initiator name "+t.Initiator.Name)
		}
	case t != nil && t.Initiator.Name != "":
		d.Initiator = t.Initiator.Name
	default:
		return nil, errors.New("no initiator name: the iBFT has none; set rd.iscsi.initiator=")
	}
	if p.NIC < 0 {
		return nil, errors.New("no usable NIC in the iBFT: isboot configures the network from the iBFT, which netroot= alone does not replace")
	}
	return p, nil
}

// portal is a target's "address:port", the port defaulting to 3260.
func portal(tg ibft.Target) string {
	port := int(tg.Port)
	if port == 0 {
		port = defaultPort
	}
	return net.JoinHostPort(tg.IP.Unmap().String(), strconv.Itoa(port))
}
