// Package bootplan turns the iBFT and the kernel command line into the boot plan: the
// LUN to log in to and the NIC that reaches it. It is the one place that mapping lives:
// PID 1 (initproc), `isboot serve --ibft` and `isboot netcfg` all plan through it, so
// they cannot drift apart. It decides and touches nothing; callers apply the plan.
package bootplan

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/internal/status"
	"github.com/isboot/isboot/iscsi"
	"github.com/isboot/isboot/netcfg"
)

const defaultPort = 3260

// ErrNoInitiator means neither the iBFT nor the command line names the initiator.
var ErrNoInitiator = errors.New("no initiator name: the iBFT has none; set rd.iscsi.initiator=")

// Plan is what the boot will do, decided before anything is touched.
type Plan struct {
	// IP is the network configuration from the command line (ip=, or DHCP by
	// default when there is no iBFT to take it from); nil: the iBFT NIC's.
	IP *cmdline.IPConfig
	// ISCSI is how to reach the LUN: the portals (the boot target's first, then the
	// other paths to the same LUN), target, LUN, initiator and CHAP. Logf, ISID and
	// the tuning fields are left to whoever dials.
	ISCSI   iscsi.Config
	NIC     int          // iBFT NIC index to configure
	Targets []netip.Addr // command-line target addresses the network must route to; nil: the iBFT's
	IBFT    []status.KV  // hw.ibft.* keys for the status file, secrets masked
	Notes   []string     // fallbacks taken and overrides applied, for the log

	// Paths, with isboot.multipath, are the LUN's paths used all at once
	// (iscsi.Multipath): the boot target first, then the iBFT's other targets
	// naming the LUN, or every netroot= in order, each with its own portal and
	// CHAP. nil: one session, failing over between ISCSI's portals.
	Paths []iscsi.Config
	// PathNICs are the iBFT NICs the paths other than the first are reached
	// through, when they differ from NIC: they are configured too.
	PathNICs []int
}

// String prints the plan for people; it shows no secret.
func (p *Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "target: %s\n", p.ISCSI)
	if p.IP != nil {
		fmt.Fprintf(&b, "nic:    %s (command line)\n", p.IP)
	} else {
		fmt.Fprintf(&b, "nic:    iBFT nic%d\n", p.NIC)
	}
	if p.Targets != nil {
		s := make([]string, len(p.Targets))
		for i, a := range p.Targets {
			s[i] = a.String()
		}
		fmt.Fprintf(&b, "routes: to %s (netroot=), not to the iBFT targets\n", strings.Join(s, ", "))
	}
	for _, n := range p.Notes {
		fmt.Fprintf(&b, "note:   %s\n", n)
	}
	return b.String()
}

// Make merges the iBFT (t, possibly nil) with the command line, which wins:
// netroot= replaces the target (and its CHAP), rd.iscsi.initiator= the initiator name,
// ip= the network; rd.iscsi.param= sets the digests. rd.iscsi.firmware=0 leaves the
// iBFT out. Without an iBFT, the command line alone is the plan: netroot= names the
// target, ip= the network (DHCP on the first link with carrier when not given), and
// rd.iscsi.initiator= the initiator (else a generated name, GeneratedInitiator).
func Make(c *cmdline.CmdLine, t *ibft.Table) (*Plan, error) {
	p := &Plan{NIC: -1}
	d := &p.ISCSI
	if t != nil && !UseIBFT(c) {
		t = nil
		p.Notes = append(p.Notes, "rd.iscsi.firmware=0: the iBFT is left out")
	}
	ip, err := commandLineIP(c, t)
	if err != nil {
		return nil, err
	}
	if ip != nil {
		p.IP = ip
		p.Notes = append(p.Notes, "network from the command line: "+ip.String())
	}

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
			p.IBFT = append(p.IBFT, status.KV{Key: kv.Key, Value: kv.Value})
		}
	}

	switch n := c.Netroot; {
	case n != nil:
		nrs := c.Netroots
		if len(nrs) == 0 {
			nrs = []*cmdline.Netroot{n}
		}
		*d = netrootConfig(nrs[0])
		p.Targets, _ = netrootTargets(c)
		if t != nil {
			p.Notes = append(p.Notes, "netroot= on the command line replaces the iBFT target: "+nrs[0].String())
		} else {
			p.Notes = append(p.Notes, "target from netroot=: "+nrs[0].String())
		}
		if c.Multipath && len(nrs) > 1 {
			p.Paths = append(p.Paths, *d)
		}
		for i := 1; i < len(nrs); i++ {
			o := netrootConfig(nrs[i])
			switch {
			case c.Multipath:
				// The identity check (VPD 0x83) decides whether it reaches the LUN.
				p.Paths = append(p.Paths, o)
				p.Notes = append(p.Notes, "netroot= "+nrs[i].String()+" is path "+strconv.Itoa(i)+" to the LUN")
			case o.TargetName != d.TargetName || o.LUN != d.LUN:
				p.Notes = append(p.Notes, "netroot= "+nrs[i].String()+" names another target or LUN than the first: ignored")
			case !slices.Contains(d.Portals, o.Portals[0]):
				d.Portals = append(d.Portals, o.Portals[0])
				p.Notes = append(p.Notes, "netroot= "+nrs[i].String()+" is another portal to fail over to (with the first netroot='s CHAP; isboot.multipath=1 uses each its own)")
			}
		}
	case t != nil:
		tg := choice.Target
		if !tg.IP.IsValid() || tg.IP.IsUnspecified() {
			return nil, fmt.Errorf("ibft: target%d has no address (use netroot= to give one)", tg.Index)
		}
		if tg.Name == "" {
			return nil, fmt.Errorf("ibft: target%d has no name (use netroot= to give one)", tg.Index)
		}
		// Commands carry the LUN in the 8-byte form the iBFT stores, as is: a bus
		// number or a second level has no plain number to rebuild it from.
		lun, err := tg.LUNBytes()
		if err != nil {
			return nil, err
		}
		*d = targetConfig(tg, lun)
		if c.Multipath {
			p.Paths = []iscsi.Config{*d}
		}
		// The other valid targets naming the same LUN are paths to it: the initiator
		// fails over to them in turn (iBFT target0, then target1), or, with
		// isboot.multipath, uses them all at once, each with its own CHAP and NIC.
		for _, o := range t.Targets {
			olun, err := o.LUNBytes()
			if o.Index != tg.Index && o.Flags&ibft.FlagValid != 0 && o.Name == tg.Name && err == nil && olun == lun &&
				o.IP.IsValid() && !o.IP.IsUnspecified() && !slices.Contains(d.Portals, portal(o)) {
				d.Portals = append(d.Portals, portal(o))
				p.Notes = append(p.Notes, fmt.Sprintf("target%d (%s) is another path to the LUN", o.Index, portal(o)))
				if c.Multipath {
					p.Paths = append(p.Paths, targetConfig(o, olun))
					if o.NIC != tg.NIC && !slices.Contains(p.PathNICs, o.NIC) {
						p.PathNICs = append(p.PathNICs, o.NIC)
					}
				}
			}
		}
		if len(p.Paths) < 2 {
			p.Paths, p.PathNICs = nil, nil
		}
	default:
		return nil, errors.New("no iBFT found and no netroot= on the kernel command line: nothing to boot from")
	}

	switch {
	case c.Initiator != "":
		d.InitiatorName = c.Initiator
		if t != nil && t.Initiator.Name != "" && t.Initiator.Name != c.Initiator {
			p.Notes = append(p.Notes, "rd.iscsi.initiator= replaces the iBFT initiator name "+t.Initiator.Name)
		}
	case t != nil && t.Initiator.Name != "":
		d.InitiatorName = t.Initiator.Name
	case t == nil:
		name, how := GeneratedInitiator()
		d.InitiatorName = name
		p.Notes = append(p.Notes, "no rd.iscsi.initiator=: initiator name "+name+" ("+how+")")
	default:
		return nil, ErrNoInitiator
	}
	if p.NIC < 0 && p.IP == nil {
		return nil, errors.New("no usable NIC in the iBFT: isboot configures the network from the iBFT, which netroot= alone does not replace")
	}
	// The iBFT has no digest fields; rd.iscsi.param= asks for them.
	d.HeaderDigest, d.DataDigest = c.HeaderDigest, c.DataDigest
	for i := range p.Paths {
		p.Paths[i].InitiatorName, p.Paths[i].HeaderDigest, p.Paths[i].DataDigest = d.InitiatorName, d.HeaderDigest, d.DataDigest
	}
	if len(p.Paths) > 1 {
		p.Notes = append(p.Notes, fmt.Sprintf("isboot.multipath: %d paths used at once", len(p.Paths)))
	}
	for _, dg := range []struct {
		key string
		d   iscsi.Digest
	}{{"HeaderDigest", c.HeaderDigest}, {"DataDigest", c.DataDigest}} {
		if dg.d.Required() {
			p.Notes = append(p.Notes, fmt.Sprintf("rd.iscsi.param: %s=%s is required: a target that refuses it fails the boot", dg.key, dg.d))
		} else if dg.d != iscsi.DigestAuto {
			p.Notes = append(p.Notes, fmt.Sprintf("rd.iscsi.param: %s=%s offered", dg.key, dg.d))
		}
	}
	return p, nil
}

// Network plans the configuration of iBFT NIC nic, or of the boot target's NIC when
// nic is negative, with the command line's overrides: a netroot= server given as an
// address replaces the iBFT targets as route destinations (old iPXE writes garbage
// IPv4 for IPv6 targets), isboot.dhcp asks for DHCP renewal.
func Network(c *cmdline.CmdLine, t *ibft.Table, nic int) (*netcfg.Plan, error) {
	if t != nil && !UseIBFT(c) {
		t = nil
	}
	ip, err := commandLineIP(c, t)
	if err != nil {
		return nil, err
	}
	if ip != nil {
		targets, warning := netrootTargets(c)
		np, err := netcfg.NewManualPlan(manual(ip, targets))
		if err != nil {
			return nil, err
		}
		if warning != "" {
			np.Warnings = append(np.Warnings, warning)
		}
		if len(c.IP) > 1 {
			np.Warnings = append(np.Warnings, fmt.Sprintf("%d more ip= keys not applied: isboot configures the boot NIC only", len(c.IP)-1))
		}
		if ip.MAC != nil {
			np.Warnings = append(np.Warnings, "ip=: the MAC address field is not applied")
		}
		return np, nil
	}
	if t != nil && nic < 0 {
		choice, err := t.BootChoice()
		if err != nil {
			return nil, err
		}
		nic = choice.NIC.Index
	}
	targets, warning := netrootTargets(c)
	np, err := netcfg.NewPlan(t, nic, netcfg.Overrides{Targets: targets, Renew: c.DHCP})
	if err != nil {
		return nil, err
	}
	// An address the firmware leased by DHCP is renewed by the daemon for the life
	// of the system (isboot.dhcp=1: confirmed at boot too; isboot.dhcp=0: never).
	if np.Origin == ibft.OriginDHCP && !c.DHCPSet {
		np.ConfirmLater = true
	}
	if warning != "" {
		np.Warnings = append(np.Warnings, warning)
	}
	return np, nil
}

// UseIBFT says whether the boot reads the iBFT: unless rd.iscsi.firmware=0 (or
// rd.iscsi.ibft=0).
func UseIBFT(c *cmdline.CmdLine) bool { return !c.FirmwareSet || c.Firmware }

// commandLineIP is the network configuration the command line gives, nil when the
// iBFT's NIC is to be used: the first ip= unless it says ibft; without an iBFT and
// without ip=, DHCP on the first link with carrier (as dracut does for netroot=).
func commandLineIP(c *cmdline.CmdLine, t *ibft.Table) (*cmdline.IPConfig, error) {
	if len(c.IP) > 0 && c.IP[0].Method != cmdline.IPIBFT {
		ip := c.IP[0]
		return &ip, nil
	}
	if t != nil {
		return nil, nil
	}
	if len(c.IP) > 0 {
		return nil, errors.New("ip=ibft, but the boot has no iBFT (none found, or rd.iscsi.firmware=0)")
	}
	return &cmdline.IPConfig{Method: cmdline.IPDHCP}, nil
}

// manual turns an ip= into netcfg's terms.
func manual(ip *cmdline.IPConfig, targets []netip.Addr) netcfg.Manual {
	m := netcfg.Manual{Iface: ip.Iface, Addr: ip.Addr, Gateway: ip.Gateway, Hostname: ip.Hostname, DNS: ip.DNS, MTU: ip.MTU, Targets: targets}
	switch ip.Method {
	case cmdline.IPDHCP:
		m.Mode = netcfg.ModeDHCP4
	case cmdline.IPDHCP6:
		m.Mode = netcfg.ModeDHCP6
	case cmdline.IPAuto6:
		m.Mode = netcfg.ModeAuto6
	}
	return m
}

// netrootTargets is every netroot= server given as an address; nil leaves the routes
// to the iBFT's targets. A host name gets no host route, and a warning says so.
func netrootTargets(c *cmdline.CmdLine) ([]netip.Addr, string) {
	nrs := c.Netroots
	if len(nrs) == 0 && c.Netroot != nil {
		nrs = []*cmdline.Netroot{c.Netroot}
	}
	var addrs []netip.Addr
	var warnings []string
	for _, n := range nrs {
		if n.Server == "" {
			continue
		}
		a, err := netip.ParseAddr(n.Server)
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("netroot= server %q is not an address: no host route for it", n.Server))
			continue
		}
		// A route is to the address; the zone of [fe80::1%eth0] only picks the link.
		a = a.WithZone("")
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	return addrs, strings.Join(warnings, "; ")
}

// ZonePortals returns portals with the zone link added to every link-local IPv6
// address that has none: fe80::/10 exists on every link, so connect(2) refuses such
// an address without the interface, and the iBFT cannot name one. link is the boot
// NIC's interface, known once the network is configured. A zone given on the
// command line (netroot=iscsi:[fe80::1%eth0]...) is kept.
func ZonePortals(portals []string, link string) []string {
	out := slices.Clone(portals)
	for i, p := range out {
		host, port, err := net.SplitHostPort(p)
		if err != nil {
			continue
		}
		a, err := netip.ParseAddr(host)
		if err != nil || !a.Is6() || a.Zone() != "" || !a.IsLinkLocalUnicast() {
			continue
		}
		out[i] = net.JoinHostPort(a.WithZone(link).String(), port)
	}
	return out
}

// netrootConfig is the LUN one netroot= names, with its CHAP.
func netrootConfig(n *cmdline.Netroot) iscsi.Config {
	port := int(n.Port)
	if port == 0 {
		port = defaultPort
	}
	return iscsi.Config{
		Portals:    []string{net.JoinHostPort(n.Server, strconv.Itoa(port))},
		TargetName: n.Target, LUN: n.LUN,
		CHAPUser: n.User, CHAPSecret: n.Secret, RevCHAPUser: n.RevUser, RevCHAPSecret: n.RevSecret,
	}
}

// targetConfig is the LUN an iBFT target names (lun: its 8 bytes), with its CHAP.
func targetConfig(tg ibft.Target, lun [8]byte) iscsi.Config {
	d := iscsi.Config{Portals: []string{portal(tg)}, TargetName: tg.Name, LUNAddr: iscsi.LUNAddr(lun)}
	d.LUN, _ = d.LUNAddr.Number()
	if tg.CHAPType >= ibft.CHAPOneWay {
		d.CHAPUser, d.CHAPSecret = tg.CHAPName, tg.CHAPSecret
	}
	if tg.CHAPType >= ibft.CHAPMutual {
		d.RevCHAPUser, d.RevCHAPSecret = tg.RevCHAPName, tg.RevCHAPSecret
	}
	return d
}

// portal is a target's "address:port", the port defaulting to 3260.
func portal(tg ibft.Target) string {
	port := int(tg.Port)
	if port == 0 {
		port = defaultPort
	}
	return net.JoinHostPort(tg.IP.Unmap().String(), strconv.Itoa(port))
}
