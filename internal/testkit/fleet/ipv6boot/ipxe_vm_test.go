package ipv6boot

import (
	"fmt"
	"testing"

	"github.com/isboot/isboot/internal/testkit/vm"
)

// TestBootIPv6IPXE boots through Debian's iPXE BIOS ROM (1.0.0+git-20190125), which
// has IPv6: it configures fec0::5054:ff:fe12:3456/64 by SLAAC from QEMU's router and
// logs in with `sanhook iscsi:[fec0::2]::PORT:1:IQN` over IPv6. Its iBFT cannot
// describe that boot: the NIC carries only the IPv4 DHCP lease and the target address
// is the first four bytes of fec0::2 read as IPv4 (254.192.0.0). So the kernel line
// names the target with netroot=, which wins over the iBFT; isboot configures the
// iBFT's IPv4, waits for the kernel's SLAAC address (the plan's IPv6 target has no
// address of its family otherwise), logs in over IPv6 and switches to the root.
func TestBootIPv6IPXE(t *testing.T) {
	vm.Require(t)
	tg := startTarget(t)
	netroot := fmt.Sprintf("iscsi:[%s]::%d:1:%s", vm.HostAddr6, tg.port, tg.tgt.IQN)
	v := vm.Start(t, vm.Config{
		Firmware: vm.BIOS, Kernel: vm.DebianKernel(t).Image, Initrd: initrd(t),
		Cmdline: "console=ttyS0 panic=-1 isboot.timeout=60 isboot.debug=1 netroot=" + netroot,
		NIC:     &vm.NIC{Model: "virtio-net-pci", MAC: "52:54:00:12:34:56"},
		IPXE:    vm.IPXE{Target: &vm.SANTarget{Server: vm.HostAddr6, Port: tg.port, LUN: 1, IQN: tg.tgt.IQN}},
	})
	con := waitRoot(t, v)
	st := check(t, con, []string{
		`net0: fec0::5054:ff:fe12:3456/64 gw fe80::2`, // iPXE's SLAAC
		`Registered SAN device 0x80`,                  // iPXE's login over IPv6
		`isboot: note: netroot= on the command line replaces the iBFT target`,
		`isboot: netcfg: eth0 has fec0::5054:ff:fe12:3456 from router advertisements`,
		`isboot: \S+ at \[fec0::2\]:\d+ is /dev/nbd0`,
		`ISBOOT-ADDR6 eth0 fec0000000000000505400fffe123456/64`,
	}, map[string]string{
		"net.isboot.state": "serving", "net.isboot.target": tg.tgt.IQN, "net.isboot.nic": "eth0",
		"net.isboot.portal": fmt.Sprintf("[fec0::2]:%d", tg.port),
	})
	t.Logf("iPXE's iBFT for this IPv6 boot: target_address %q, initiator_address %q",
		st["hw.ibft.target_address"], st["hw.ibft.initiator_address"])
	logTimes(t, con, v)
}
