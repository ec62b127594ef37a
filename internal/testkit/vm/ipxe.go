package vm

import (
	"fmt"
	"net/netip"
	"strings"
)

// Names in the TFTP root. The kernel line's initrd= (UEFI) refers to initrdName.
const (
	scriptName = "boot.ipxe"
	kernelName = "vmlinuz"
	initrdName = "initrd.img"
)

// HostAddr is the host as the guest sees it on QEMU user networking.
const HostAddr = "10.0.2.2"

// HostAddr6 is the host over IPv6 on QEMU user networking (its router advertises
// fec0::/64; connections to this address reach the host's ::1).
const HostAddr6 = "fec0::2"

// IPXE is what the generated iPXE script does before it boots the kernel.
type IPXE struct {
	// Static configures net0 by hand (set net0/ip ..., ifopen) instead of dhcp.
	Static *StaticIP
	// Hostname sets iPXE's hostname (it ends up in the iBFT NIC structure).
	Hostname string
	// InitiatorIQN sets initiator-iqn; empty lets iPXE derive one.
	InitiatorIQN string
	// Target is hooked with sanhook before the kernel boots; nil skips it.
	Target *SANTarget
	// Commands run after the network is up and before sanhook (debugging).
	Commands []string
}

// StaticIP is a hand-made configuration for net0.
type StaticIP struct {
	IP      string // e.g. 10.0.2.50
	Netmask string // e.g. 255.255.255.0
	Gateway string // e.g. 10.0.2.2
	DNS     string // optional
}

// SANTarget is an iSCSI target reached from the guest.
type SANTarget struct {
	Server string // default HostAddr; an IPv6 address goes in brackets in the URI
	Port   int    // default 3260
	LUN    int
	IQN    string
	CHAP   *CHAP
}

// CHAP holds the initiator's credentials (User/Secret) and, for mutual CHAP,
// the target's (ReverseUser/ReverseSecret).
type CHAP struct {
	User, Secret               string
	ReverseUser, ReverseSecret string
}

// URI is the iPXE SAN URI: iscsi:<server>:<protocol>:<port>:<lun>:<iqn>.
func (s SANTarget) URI() string {
	server := s.Server
	if server == "" {
		server = HostAddr
	}
	if strings.Contains(server, ":") {
		server = "[" + server + "]"
	}
	port := ""
	if s.Port != 0 {
		port = fmt.Sprint(s.Port)
	}
	return fmt.Sprintf("iscsi:%s::%s:%d:%s", server, port, s.LUN, s.IQN)
}

// script renders the iPXE script for cfg.
func (p IPXE) script(cfg Config) (string, error) {
	var b strings.Builder
	line := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	line("#!ipxe")
	if s := p.Static; s != nil {
		for _, a := range []struct{ name, val string }{
			{"ip", s.IP}, {"netmask", s.Netmask}, {"gateway", s.Gateway}, {"dns", s.DNS},
		} {
			if a.val == "" {
				continue
			}
			if _, err := netip.ParseAddr(a.val); err != nil {
				return "", fmt.Errorf("ipxe: static %s %q: %w", a.name, a.val, err)
			}
			line("set net0/%s %s", a.name, a.val)
		}
		line("ifopen net0")
	} else {
		line("dhcp")
	}
	for _, kv := range [][2]string{{"hostname", p.Hostname}, {"initiator-iqn", p.InitiatorIQN}} {
		if err := checkValue(kv[0], kv[1]); err != nil {
			return "", err
		}
		if kv[1] != "" {
			line("set %s %s", kv[0], kv[1])
		}
	}
	for _, c := range p.Commands {
		line("%s", c)
	}
	if t := p.Target; t != nil {
		if t.IQN == "" {
			return "", fmt.Errorf("ipxe: target: no IQN")
		}
		if c := t.CHAP; c != nil {
			for _, kv := range [][2]string{
				{"username", c.User}, {"password", c.Secret},
				{"reverse-username", c.ReverseUser}, {"reverse-password", c.ReverseSecret},
			} {
				if err := checkValue(kv[0], kv[1]); err != nil {
					return "", err
				}
				if kv[1] != "" {
					line("set %s %s", kv[0], kv[1])
				}
			}
		}
		line("sanhook %s", t.URI())
	}
	kernelLine := "kernel " + kernelName
	if cfg.Firmware == UEFI && cfg.Initrd != "" {
		// The EFI stub loads the initrd by name from iPXE's image list.
		kernelLine += " initrd=" + initrdName
	}
	if cfg.Cmdline != "" {
		kernelLine += " " + cfg.Cmdline
	}
	line("%s", kernelLine)
	if cfg.Initrd != "" {
		line("initrd %s", initrdName)
	}
	line("boot")
	return b.String(), nil
}

// checkValue rejects values that would break the script's line syntax.
func checkValue(name, v string) error {
	if strings.ContainsAny(v, " \t\r\n$") {
		return fmt.Errorf("ipxe: %s: value must not contain spaces, newlines or $", name)
	}
	return nil
}
