// Command guestinit is the smoke-test guest's /init: it mounts the kernel
// filesystems, loads the kernel modules packed in the archive, optionally
// (smoke.net=ADDR/PREFIX,PORT) configures eth0 and answers one TCP connection,
// reports every iBFT it can find (ACPI tables and the BIOS low-memory scan) on
// the second serial port, prints markers on the console and powers off.
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/isboot/isboot/internal/testkit/vm/guest"
)

func main() {
	guest.MountKernelFS()
	uptime, _ := os.ReadFile("/proc/uptime")
	fmt.Printf("ISBOOT-GUEST-UP uptime=%s\n", strings.Fields(string(uptime) + " ?")[0])

	for _, m := range guest.LoadModules() {
		fmt.Printf("ISBOOT-GUEST-MODULE %s\n", m)
	}
	if arg := guest.Arg("smoke.net"); arg != "" {
		if err := serveNet(arg); err != nil {
			fmt.Printf("%snet: %v\n", guest.ErrorPrefix, err)
		}
	}

	report := guest.Report()
	n := 0
	emit := func(source string, table []byte) {
		n++
		fmt.Fprintf(report, "ISBOOT-IBFT source=%s b64=%s\n", source, base64.StdEncoding.EncodeToString(table))
		fmt.Printf("ISBOOT-IBFT-FOUND source=%s len=%d\n", source, len(table))
	}
	acpi, _ := filepath.Glob("/sys/firmware/acpi/tables/iBFT*")
	for _, p := range acpi {
		if b, err := os.ReadFile(p); err == nil {
			emit("acpi:"+filepath.Base(p), b)
		} else {
			fmt.Printf("%s%s: %v\n", guest.ErrorPrefix, p, err)
		}
	}
	for _, t := range scanLowMemory() {
		emit(fmt.Sprintf("mem:%#x", t.addr), t.data)
	}
	report.Sync()
	fmt.Printf("ISBOOT-GUEST-DONE tables=%d\n", n)
	guest.PowerOff()
}

type found struct {
	addr int64
	data []byte
}

// scanLowMemory looks for an iBFT the way the kernel does: 16-byte steps
// through 0x80000-0xFFFFF, skipping the VGA hole 0xA0000-0xBFFFF.
func scanLowMemory() []found {
	f, err := os.Open("/dev/mem")
	if err != nil {
		fmt.Printf("%s/dev/mem: %v\n", guest.ErrorPrefix, err)
		return nil
	}
	defer f.Close()
	var out []found
	for _, r := range [][2]int64{{0x80000, 0xA0000}, {0xC0000, 0x100000}} {
		mem := make([]byte, r[1]-r[0])
		// Page by page: one unreadable page must not hide the rest.
		for off := int64(0); off < int64(len(mem)); off += 4096 {
			f.ReadAt(mem[off:off+4096], r[0]+off)
		}
		for off := 0; off+48 <= len(mem); off += 16 {
			if !bytes.Equal(mem[off:off+4], []byte("iBFT")) {
				continue
			}
			length := int(binary.LittleEndian.Uint32(mem[off+4:]))
			if length < 48 || off+length > len(mem) {
				fmt.Printf("%siBFT at %#x: bad length %d\n", guest.ErrorPrefix, r[0]+int64(off), length)
				continue
			}
			out = append(out, found{r[0] + int64(off), bytes.Clone(mem[off : off+length])})
		}
	}
	return out
}
