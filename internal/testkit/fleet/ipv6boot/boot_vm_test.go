package ipv6boot

import (
	"testing"

	"github.com/isboot/isboot/internal/testkit/vm"
)

// TestBootIPv6IBFT boots from an iBFT that holds only IPv6 (NIC fec0::15/64 with
// gateway and DNS, target fec0::2), injected as an ACPI table: isboot configures the
// address (waiting for DAD), the default route through the iBFT gateway and the DNS
// server, logs in over IPv6 to tgtd on the host's ::1, and the real root comes up on
// the LUN with the status file naming the IPv6 portal.
func TestBootIPv6IBFT(t *testing.T) {
	vm.Require(t)
	tg := startTarget(t)
	v := vm.Start(t, vm.Config{
		Firmware: vm.Direct, Kernel: vm.DebianKernel(t).Image, Initrd: initrd(t),
		Cmdline:    "console=ttyS0 panic=-1 isboot.timeout=60 isboot.debug=1",
		ACPITables: []string{writeTable(t, ipv6Table(tg.tgt.IQN, tg.port))},
		NIC:        &vm.NIC{Model: "virtio-net-pci", MAC: "52:54:00:12:34:56"},
	})
	con := waitRoot(t, v)
	check(t, con, []string{
		`isboot: network: eth0 is fec0::15/64`,
		`isboot: netcfg: waiting up to \S+ for duplicate address detection of fec0::15 on eth0`,
		`isboot: \S+ at \[fec0::2\]:\d+ is /dev/nbd0`,
		// fec0::/10 is the old site-local range: the kernel gives it site scope (0x40).
		// flags 80: permanent, DAD done.
		`ISBOOT-ADDR6 eth0 fec00000000000000000000000000015/64 scope=40 flags=80`,
		// The iBFT gateway, one metric ahead of the router slirp advertises (fe80::2).
		`ISBOOT-DEFAULT6 via=fec00000000000000000000000000002 metric=1023 dev=eth0`,
		`ISBOOT-DEFAULT6 via=fe800000000000000000000000000002 metric=1024 dev=eth0`,
		`ISBOOT-FILE /run/net6-eth0.conf IPV6ADDR=.?fec0::15`,
		`ISBOOT-FILE /run/net6-eth0.conf IPV6GATEWAY=.?fec0::2`,
		`ISBOOT-FILE /run/isboot/resolv.conf nameserver fec0::3`,
	}, map[string]string{
		"net.isboot.state": "serving", "net.isboot.target": tg.tgt.IQN, "net.isboot.nic": "eth0",
		"net.isboot.portal": "[fec0::2]:" + itoa(tg.port), "hw.ibft.target_address": "fec0::2",
		"hw.ibft.initiator_address": "fec0::15", "hw.ibft.nic_gateway": "fec0::2",
	})
	logTimes(t, con, v)
}
