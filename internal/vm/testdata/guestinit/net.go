package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// cmdlineArg returns the value of key=value on the kernel command line.
func cmdlineArg(key string) string {
	b, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// loadModules loads every module in modules.dep, dependencies first.
func loadModules() {
	var u unix.Utsname
	unix.Uname(&u)
	dir := filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
	dep, err := os.ReadFile(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return // no modules packed
	}
	deps := map[string][]string{}
	var order []string
	for _, line := range strings.Split(string(dep), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m := strings.TrimSuffix(f[0], ":")
		deps[m] = f[1:]
		order = append(order, m)
	}
	done := map[string]bool{}
	var load func(m string)
	load = func(m string) {
		if done[m] {
			return
		}
		done[m] = true
		for i := len(deps[m]) - 1; i >= 0; i-- {
			load(deps[m][i])
		}
		f, err := os.Open(filepath.Join(dir, m))
		if err != nil {
			fmt.Printf("ISBOOT-GUEST-ERROR module %s: %v\n", m, err)
			return
		}
		defer f.Close()
		if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && err != unix.EEXIST {
			fmt.Printf("ISBOOT-GUEST-ERROR module %s: %v\n", m, err)
			return
		}
		fmt.Printf("ISBOOT-GUEST-MODULE %s\n", filepath.Base(m))
	}
	for _, m := range order {
		load(m)
	}
}

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
