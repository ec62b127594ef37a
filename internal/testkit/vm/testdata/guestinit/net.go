package main

import (
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
)

// serveNet configures eth0 with "ADDR/PREFIX,PORT" and answers one connection
// on PORT with the interface's name, MAC and address.
func serveNet(arg string) error {
	cidr, port, ok := strings.Cut(arg, ",")
	if !ok {
		return fmt.Errorf("smoke.net=%q, want ADDR/PREFIX,PORT", arg)
	}
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	var link netlink.Link
	for _, name := range []string{"lo", "eth0"} {
		if link, err = netlink.LinkByName(name); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("%s up: %w", name, err)
		}
	}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("eth0 address: %w", err)
	}
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Println("ISBOOT-GUEST-LISTENING")
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = fmt.Fprintf(c, "ISBOOT-GUEST-NET eth0 %s %s\n", link.Attrs().HardwareAddr, cidr)
	return err
}
