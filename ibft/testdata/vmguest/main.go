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

	"github.com/isboot/isboot/internal/testkit/vm/guest"
)

func main() {
	guest.MountKernelFS()
	report := guest.Report()
	sources := []string{"auto"}
	if v := guest.Arg("vmguest.sources"); v != "" {
		sources = strings.Split(v, ",")
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
	guest.PowerOff()
}
