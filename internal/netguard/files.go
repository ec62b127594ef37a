package netguard

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/isboot/isboot/netcfg"
)

// File is one file for the real root's /run.
type File struct {
	Path    string // relative to /run
	Content []byte
}

// Files are what the real root's network managers read, from /run, to leave link
// (configured as p says) alone; docs/fleet.md cites where each tool documents it.
//
//   - systemd-networkd: a .network matching the link, with KeepConfiguration=yes (it
//     never drops the link's addresses and routes, at start or stop) and the boot's
//     static configuration, so networkd, if it runs, manages the link as booted and
//     systemd-networkd-wait-online counts it. Its name sorts first ("10-"), and of
//     the .network files matching a link networkd uses the first.
//   - NetworkManager: a conf.d snippet with a [device-*] section of its own, managed=0
//     for the link's MAC and name, and the same devices appended to
//     keyfile.unmanaged-devices for versions without [device] managed=.
//
// ifupdown has nothing in /run to read: it configures only what
// /etc/network/interfaces lists (docs/fleet.md).
func Files(p *netcfg.Plan, link string) []File {
	return []File{
		{"systemd/network/10-isboot-" + link + ".network", networkdFile(p, link)},
		{"NetworkManager/conf.d/10-isboot-" + link + ".conf", networkManagerFile(p, link)},
	}
}

const header = "# Written by isboot at boot: %s carries the iSCSI session of the root filesystem.\n" +
	"# Taking its address, routes or link away hangs the root disk (the isboot daemon puts them back).\n"

func networkdFile(p *netcfg.Plan, link string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, header, link)
	b.WriteString("\n[Match]\n")
	if p.VLAN != 0 {
		// The VLAN link has its parent's MAC: match it by name and kind.
		fmt.Fprintf(&b, "Name=%s\nType=vlan\n", link)
	} else {
		// The MAC survives udev renaming the link in the real root.
		fmt.Fprintf(&b, "MACAddress=%s\nType=ether\n", p.MAC)
	}
	b.WriteString("\n[Network]\nKeepConfiguration=yes\nDHCP=no\n")
	for _, d := range p.DNS {
		fmt.Fprintf(&b, "DNS=%s\n", d)
	}
	fmt.Fprintf(&b, "\n[Address]\nAddress=%s\n", p.Addr)
	if p.LinkOnly {
		b.WriteString("Scope=link\n")
	}
	for _, r := range p.Routes {
		fmt.Fprintf(&b, "\n# %s\n[Route]\n", r.Purpose)
		if r.Dst.Bits() != 0 {
			fmt.Fprintf(&b, "Destination=%s\n", r.Dst)
		}
		if r.Via.IsValid() {
			fmt.Fprintf(&b, "Gateway=%s\n", r.Via)
			if r.OnLink {
				b.WriteString("GatewayOnLink=yes\n")
			}
		} else if r.Dst.Addr().Is4() {
			b.WriteString("Scope=link\n")
		}
		fmt.Fprintf(&b, "PreferredSource=%s\n", p.Addr.Addr())
	}
	return b.Bytes()
}

func networkManagerFile(p *netcfg.Plan, link string) []byte {
	devices := []string{"mac:" + strings.ToLower(p.MAC.String()), "interface-name:" + link}
	var b bytes.Buffer
	fmt.Fprintf(&b, header, link)
	// A section name of our own: a later file setting keyfile.unmanaged-devices
	// (the admin's) replaces that key, never this section.
	fmt.Fprintf(&b, "\n[device-isboot-%s]\nmatch-device=%s\nmanaged=0\n", link, strings.Join(devices, ","))
	fmt.Fprintf(&b, "\n[keyfile]\nunmanaged-devices+=%s\n", strings.Join(devices, ";"))
	return b.Bytes()
}
