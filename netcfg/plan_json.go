package netcfg

import (
	"encoding/json"
	"net/netip"
)

// MarshalJSON renders the plan as one object (isboot netcfg --dry-run --json), in the
// style of the iBFT's: snake_case keys, addresses as strings, "" for an absent one.
func (p *Plan) MarshalJSON() ([]byte, error) {
	type route struct {
		Dst     string `json:"dst"` // "default" or a prefix
		Via     string `json:"via"` // "": on-link
		OnLink  bool   `json:"onlink"`
		Purpose string `json:"purpose"`
	}
	v := struct {
		Source   string   `json:"source"`
		NIC      int      `json:"nic"`
		MAC      string   `json:"mac"`
		PCI      string   `json:"pci_bdf"`
		VLAN     uint16   `json:"vlan"`
		Addr     string   `json:"address"`
		LinkOnly bool     `json:"link_scope"`
		Origin   string   `json:"origin"`
		DHCP     string   `json:"dhcp"`
		Gateway  string   `json:"gateway"`
		Routes   []route  `json:"routes"`
		DNS      []string `json:"dns"`
		Hostname string   `json:"hostname"`
		Renew    bool     `json:"dhcp_renew"`
		SLAAC    bool     `json:"await_slaac"`
		Warnings []string `json:"warnings"`
	}{
		Source: p.Source, NIC: p.NIC, MAC: p.MAC.String(), PCI: p.PCI.String(), VLAN: p.VLAN,
		Addr: p.Addr.String(), LinkOnly: p.LinkOnly, Origin: OriginName(p.Origin),
		DHCP: addrString(p.DHCP), Gateway: addrString(p.Gateway), Routes: []route{}, DNS: []string{},
		Hostname: p.Hostname, Renew: p.Renew, SLAAC: p.AwaitSLAAC, Warnings: p.Warnings,
	}
	if v.Warnings == nil {
		v.Warnings = []string{}
	}
	for _, r := range p.Routes {
		dst := r.Dst.String()
		if r.Dst.Bits() == 0 {
			dst = "default"
		}
		v.Routes = append(v.Routes, route{Dst: dst, Via: addrString(r.Via), OnLink: r.OnLink, Purpose: r.Purpose})
	}
	for _, d := range p.DNS {
		v.DNS = append(v.DNS, d.String())
	}
	return json.Marshal(v)
}

// addrString is a's text, "" for the zero or unspecified address.
func addrString(a netip.Addr) string {
	if !a.IsValid() || a.IsUnspecified() {
		return ""
	}
	return a.String()
}
