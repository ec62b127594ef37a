// Command lio-init is /init of the LIO target VM (package liotarget): it loads the
// kernel's target modules, brings up eth0 on QEMU's user network, sets LIO up through
// configfs from /etc/lio-target.json and prints LIO-READY. Any failure prints one
// LIO-FAILED line; the process then idles, since PID 1 must not exit.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/internal/testkit/liotarget/configfs"
	"github.com/isboot/isboot/internal/testkit/vm/guest"
)

// ConfigPath is where the host's harness puts the target description.
const ConfigPath = "/etc/lio-target.json"

// config is the file's shape: the target, and the VM's own address.
type config struct {
	Target  configfs.Target
	Address string // e.g. 10.0.2.15/24, QEMU user networking's guest address
}

func main() {
	guest.MountKernelFS()
	if err := run(); err != nil {
		fmt.Printf("LIO-FAILED %v\n", err)
	} else {
		fmt.Println("LIO-READY")
	}
	for { // not select{}: with no other goroutine the runtime calls that a deadlock and exits
		time.Sleep(time.Hour)
	}
}

func run() error {
	var c config
	b, err := os.ReadFile(ConfigPath)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return fmt.Errorf("%s: %w", ConfigPath, err)
	}
	steps, err := configfs.Plan(c.Target)
	if err != nil {
		return err
	}
	fmt.Printf("lio-init: modules loaded: %v\n", guest.LoadModules())
	if err := unix.Mount("configfs", "/sys/kernel/config", "configfs", 0, ""); err != nil {
		return fmt.Errorf("mount configfs: %w", err)
	}
	if err := waitFor(c.Target.Device, 20*time.Second); err != nil {
		return err
	}
	if err := netUp(c.Address); err != nil {
		return err
	}
	return configfs.Apply(configfs.Root, steps, func(f string, a ...any) { fmt.Printf(f+"\n", a...) })
}

// waitFor waits for devtmpfs to show path (virtio_blk probes asynchronously).
func waitFor(path string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		_, err := os.Stat(path)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// netUp brings up lo and eth0 with addr; QEMU's hostfwd rules forward to it.
func netUp(addr string) error {
	a, err := netlink.ParseAddr(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	var link netlink.Link
	for _, name := range []string{"lo", "eth0"} {
		if link, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("%s up: %w", name, err)
		}
	}
	if err := netlink.AddrAdd(link, a); err != nil {
		return fmt.Errorf("eth0 address: %w", err)
	}
	return nil
}
