// Command vmguest is /init of the ibft VM tests: it mounts the kernel filesystems,
// runs `/isboot ibft --json --verbose --source S` for each S in the kernel parameter
// vmguest.sources=a,b (default auto) and hands each output to the host on the second
// serial port, then powers off. The host compares that JSON with the table it injected
// (or iPXE wrote).
package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	for _, m := range []struct{ src, dst, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fs, 0, ""); err != nil {
			fmt.Printf("IBFT-GUEST-ERROR mount %s: %v\n", m.dst, err)
		}
	}
	report, err := os.OpenFile("/dev/ttyS1", os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		fmt.Printf("IBFT-GUEST-ERROR report channel: %v\n", err)
		report = os.Stdout
	}
	sources := []string{"auto"}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(f, "vmguest.sources="); ok {
			sources = strings.Split(v, ",")
		}
	}
	for _, src := range sources {
		var out bytes.Buffer
		cmd := exec.Command("/isboot", "ibft", "--json", "--verbose", "--source", src)
		cmd.Stdout, cmd.Stderr = &out, os.Stdout // the verbose search log goes to the console
		rc := 0
		if err := cmd.Run(); err != nil {
			rc = -1
			if ee, ok := err.(*exec.ExitError); ok {
				rc = ee.ExitCode()
			}
		}
		fmt.Fprintf(report, "IBFT-JSON-BEGIN source=%s\n%sIBFT-JSON-END rc=%d\n", src, out.Bytes(), rc)
	}
	report.Sync()
	fmt.Printf("IBFT-GUEST-DONE\n")
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}
