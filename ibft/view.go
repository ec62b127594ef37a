package ibft

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Mask replaces a present secret in every printed form unless secrets are asked for.
const Mask = "***"

// The JSON shape of `isboot ibft --json` (DESIGN.md); field order is the contract's.
type jsonTable struct {
	Source     string        `json:"source"`
	Signature  string        `json:"signature"`
	Revision   uint8         `json:"revision"`
	OEMID      string        `json:"oem_id"`
	OEMTableID string        `json:"oem_table_id"`
	Initiator  jsonInitiator `json:"initiator"`
	NICs       []jsonNIC     `json:"nics"`
	Targets    []jsonTarget  `json:"targets"`
}

type jsonInitiator struct {
	Flags  uint8     `json:"flags"`
	Name   string    `json:"name"`
	ISNS   string    `json:"isns"`
	SLP    string    `json:"slp"`
	Radius [2]string `json:"radius"`
}

type jsonNIC struct {
	Index    int       `json:"index"`
	Flags    uint8     `json:"flags"`
	IP       string    `json:"ip"`
	Prefix   int       `json:"prefix"`
	Origin   uint8     `json:"origin"`
	Gateway  string    `json:"gateway"`
	DNS      [2]string `json:"dns"`
	DHCP     string    `json:"dhcp"`
	VLAN     uint16    `json:"vlan"`
	MAC      string    `json:"mac"`
	PCIBDF   string    `json:"pci_bdf"`
	Hostname string    `json:"hostname"`
}

type jsonTarget struct {
	Index         int    `json:"index"`
	Flags         uint8  `json:"flags"`
	IP            string `json:"ip"`
	Port          uint16 `json:"port"`
	LUN           uint64 `json:"lun"`
	LUNRaw        string `json:"lun_raw"`
	CHAPType      uint8  `json:"chap_type"`
	NIC           int    `json:"nic"`
	Name          string `json:"name"`
	CHAPName      string `json:"chap_name"`
	CHAPSecret    string `json:"chap_secret"`
	RevCHAPName   string `json:"rev_chap_name"`
	RevCHAPSecret string `json:"rev_chap_secret"`
}

// JSON renders the table as `isboot ibft --json` prints it (indented, no trailing
// newline). Present secrets read Mask unless showSecrets.
func (t *Table) JSON(showSecrets bool) ([]byte, error) {
	j := jsonTable{
		Source: t.Source, Signature: t.Signature, Revision: t.Revision,
		OEMID: t.OEMID, OEMTableID: t.OEMTableID,
		Initiator: jsonInitiator{
			Flags: t.Initiator.Flags, Name: t.Initiator.Name,
			ISNS: addrString(t.Initiator.ISNS), SLP: addrString(t.Initiator.SLP),
			Radius: [2]string{addrString(t.Initiator.Radius[0]), addrString(t.Initiator.Radius[1])},
		},
		NICs:    []jsonNIC{},
		Targets: []jsonTarget{},
	}
	for _, n := range t.NICs {
		j.NICs = append(j.NICs, jsonNIC{
			Index: n.Index, Flags: n.Flags, IP: addrString(n.IP), Prefix: n.Prefix,
			Origin: n.Origin, Gateway: addrString(n.Gateway),
			DNS:  [2]string{addrString(n.DNS[0]), addrString(n.DNS[1])},
			DHCP: addrString(n.DHCP), VLAN: n.VLAN, MAC: n.MAC.String(),
			PCIBDF: BDFString(n.PCIBDF), Hostname: n.Hostname,
		})
	}
	for _, tg := range t.Targets {
		j.Targets = append(j.Targets, jsonTarget{
			Index: tg.Index, Flags: tg.Flags, IP: addrString(tg.IP), Port: tg.Port,
			LUN: tg.LUN, LUNRaw: hex.EncodeToString(tg.LUNRaw[:]), CHAPType: tg.CHAPType,
			NIC: tg.NIC, Name: tg.Name,
			CHAPName: tg.CHAPName, CHAPSecret: secret(tg.CHAPSecret, showSecrets),
			RevCHAPName: tg.RevCHAPName, RevCHAPSecret: secret(tg.RevCHAPSecret, showSecrets),
		})
	}
	return json.MarshalIndent(j, "", "  ")
}

// KV is one `key: value` line of the seed-style view.
type KV struct {
	Key, Value string
}

func (kv KV) String() string { return kv.Key + ": " + kv.Value }

// Keys renders the hw.ibft.* pairs (the names FreeBSD's isboot used, plus the rest of
// the boot NIC and target): table identity first, then the pair BootChoice picks.
// Present secrets read Mask unless showSecrets, so the status file can carry them.
func (t *Table) Keys(showSecrets bool) []KV {
	var kv []KV
	add := func(k, v string) { kv = append(kv, KV{"hw.ibft." + k, v}) }
	add("source", t.Source)
	add("signature", t.Signature)
	add("oem_id", t.OEMID)
	add("oem_table_id", t.OEMTableID)
	add("nics", strconv.Itoa(len(t.NICs)))
	add("targets", strconv.Itoa(len(t.Targets)))
	add("initiator_name", t.Initiator.Name)
	c, err := t.BootChoice()
	if err != nil {
		add("boot_error", err.Error())
		return kv
	}
	n, tg := c.NIC, c.Target
	add("initiator_address", addrString(n.IP))
	add("nic_index", strconv.Itoa(n.Index))
	add("nic_flags", strconv.Itoa(int(n.Flags)))
	add("nic_mac", n.MAC.String())
	add("nic_pci_bdf", BDFString(n.PCIBDF))
	add("nic_origin", strconv.Itoa(int(n.Origin)))
	add("nic_prefix", strconv.Itoa(n.Prefix))
	add("nic_gateway", addrString(n.Gateway))
	var dns []string
	for _, a := range n.DNS {
		if a.IsValid() {
			dns = append(dns, a.String())
		}
	}
	add("nic_dns", strings.Join(dns, ","))
	add("nic_dhcp", addrString(n.DHCP))
	add("nic_vlan", strconv.Itoa(int(n.VLAN)))
	add("nic_hostname", n.Hostname)
	add("target_index", strconv.Itoa(tg.Index))
	add("target_flags", strconv.Itoa(int(tg.Flags)))
	add("target_name", tg.Name)
	add("target_address", addrString(tg.IP))
	add("target_port", strconv.Itoa(int(tg.Port)))
	add("target_lun", strconv.FormatUint(tg.LUN, 10))
	add("target_lun_raw", hex.EncodeToString(tg.LUNRaw[:]))
	add("chap_type", strconv.Itoa(int(tg.CHAPType)))
	add("chap_name", tg.CHAPName)
	add("chap_secret", secret(tg.CHAPSecret, showSecrets))
	add("rev_chap_name", tg.RevCHAPName)
	add("rev_chap_secret", secret(tg.RevCHAPSecret, showSecrets))
	for i, note := range c.Notes {
		add(fmt.Sprintf("boot_note%d", i), note)
	}
	return kv
}

// BDFString formats a PCI bus/device/function as the kernel names it, e.g. "00:03.0".
func BDFString(bdf uint16) string {
	return fmt.Sprintf("%02x:%02x.%x", bdf>>8, (bdf>>3)&0x1f, bdf&7)
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func secret(s string, show bool) string {
	if s == "" || show {
		return s
	}
	return Mask
}
