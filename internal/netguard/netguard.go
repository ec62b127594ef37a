// Package netguard keeps the boot NIC as the boot configured it, for the life of the
// system: the root filesystem hangs when the NIC that carries its iSCSI session loses
// its address, its routes or its link. It works in two halves:
//
//   - Files renders what the real root's network managers read to keep their hands
//     off the NIC (systemd-networkd's .network with KeepConfiguration=, a
//     NetworkManager conf.d snippet marking it unmanaged); PID 1 writes them into
//     /run before switch_root.
//   - Watch (Linux) follows the NIC through netlink and puts back what goes missing:
//     the link's admin state, the address, the routes the boot installed. It needs
//     no file path, so it runs in the daemon after switch_root.
package netguard

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/isboot/isboot/netcfg"
)

// Spec is what the guard keeps: the boot's network plan on one link. It travels to
// the daemon as JSON.
type Spec struct {
	Link     string         // the link's name at boot, for messages (a rename is followed)
	Index    int            // the link's ifindex, which a rename keeps
	Addr     netip.Prefix   // the boot address
	LinkOnly bool           // IPv6 address of link scope
	Routes   []netcfg.Route // the routes the plan installs on the link
}

// SpecOf is the guard's view of plan p applied on link (index).
func SpecOf(p *netcfg.Plan, link string, index int) *Spec {
	return &Spec{Link: link, Index: index, Addr: p.Addr, LinkOnly: p.LinkOnly, Routes: p.Routes}
}

// plan is the Spec as the netcfg plan its netlink values are made from.
func (s *Spec) plan() *netcfg.Plan {
	return &netcfg.Plan{Addr: s.Addr, LinkOnly: s.LinkOnly, Routes: s.Routes}
}

// Validate says what is wrong with s, naming the field.
func (s *Spec) Validate() error {
	switch {
	case s.Index <= 0:
		return fmt.Errorf("netguard: index %d: not a link index", s.Index)
	case !s.Addr.IsValid():
		return fmt.Errorf("netguard: addr: no address")
	}
	for i, r := range s.Routes {
		if !r.Dst.IsValid() || r.Dst.Addr().Is4() != s.Addr.Addr().Is4() {
			return fmt.Errorf("netguard: routes[%d]: destination %s does not fit %s", i, r.Dst, s.Addr)
		}
	}
	return nil
}

// Restore is one pass that put something back.
type Restore struct {
	Link   string       // the link's name now
	LinkUp bool         // it was administratively down
	Addr   netip.Prefix // the address put back; zero: it was there
	Routes []string     // routes put back, as netcfg.DescribeRoute prints them
	Failed []string     // what could not be put back, with why
	// After is how long after the guard heard of the change it was done; 0 when
	// a periodic look found it.
	After time.Duration
}

// String says what was put back, in one line.
func (r Restore) String() string {
	var parts []string
	if r.LinkUp {
		parts = append(parts, "link up")
	}
	if r.Addr.IsValid() {
		parts = append(parts, "address "+r.Addr.String())
	}
	for _, rt := range r.Routes {
		parts = append(parts, "route "+rt)
	}
	s := r.Link + ": put back " + strings.Join(parts, ", ")
	if len(parts) == 0 {
		s = r.Link + ": put back nothing"
	}
	if len(r.Failed) > 0 {
		s += "; failed: " + strings.Join(r.Failed, "; ")
	}
	if r.After > 0 {
		s += fmt.Sprintf(" (%v after the change)", r.After.Round(time.Millisecond))
	}
	return s
}

// PutBack reports whether the pass put anything back.
func (r Restore) PutBack() bool { return r.LinkUp || r.Addr.IsValid() || len(r.Routes) > 0 }
