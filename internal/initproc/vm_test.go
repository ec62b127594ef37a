package initproc_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// The boot helper's slice of the shared ranges: tgtd control ports 30-39, TCP 13350-13399.
const (
	portLo, portHi = 13350, 13399
	ctlBase        = 30
)

var built struct {
	once   sync.Once
	dir    string
	isboot string
	initrd string
	err    error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// image builds isboot and the initramfs exactly as `make initramfs` does.
func image(t testing.TB) (isboot, initrd string) {
	t.Helper()
	built.once.Do(func() {
		built.dir, built.err = os.MkdirTemp("", "isboot-boot-vm-")
		if built.err != nil {
			return
		}
		gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
		built.isboot = filepath.Join(built.dir, "isboot")
		built.initrd = filepath.Join(built.dir, "isboot-initramfs.img")
		for _, args := range [][]string{
			{"build", "-trimpath", "-ldflags=-s -w -X main.Version=vmtest", "-o", built.isboot, "./cmd/isboot"},
			{"run", "./initramfs/cmd/mkinitramfs", "-isboot", built.isboot, "-o", built.initrd},
		} {
			cmd := exec.Command(gobin, args...)
			cmd.Dir = filepath.Join("..", "..")
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				built.err = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
				return
			}
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.isboot, built.initrd
}

// iBFT for QEMU's user network: the guest is 10.0.2.15, the host 10.0.2.2.
func directTable(target string, port int, chapUser, chapSecret string) *ibft.Table {
	tg := ibft.Target{
		Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr(vm.HostAddr), Port: uint16(port),
		LUN: 1, LUNRaw: [8]byte{0, 1}, Name: target,
	}
	if chapUser != "" {
		tg.CHAPType, tg.CHAPName, tg.CHAPSecret = ibft.CHAPOneWay, chapUser, chapSecret
	}
	return &ibft.Table{
		OEMID: "ISBOOT", OEMTableID: "BOOTTEST",
		Initiator: ibft.Initiator{Flags: ibft.FlagValid | ibft.FlagBootSelected, Name: "iqn.2026-01.org.isboot.test:boot-initiator"},
		NICs: []ibft.NIC{{
			Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("10.0.2.15"), Prefix: 24,
			Origin: ibft.OriginManual, Gateway: netip.MustParseAddr(vm.HostAddr),
			MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, PCIBDF: 2 << 3, // -nodefaults puts the NIC at 00:02.0
		}},
		Targets: []ibft.Target{tg},
	}
}

func writeTable(t testing.TB, tab *ibft.Table) string {
	t.Helper()
	raw, err := ibft.Encode(tab)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "ibft.bin")
	if err := os.WriteFile(file, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// A target that refuses the connection: the boot waits isboot.timeout, says what it
// waited for in one line and starts the rescue shell; PID 1 stays up. On the way it
// runs every step up to the login: mounts, kernel log, modules (nbd; e1000 from the
// iBFT NIC's modalias), the ACPI iBFT, the network and the daemon.
func TestBootRescueWhenTargetMissing(t *testing.T) {
	vm.Require(t)
	t.Parallel()
	_, initrd := image(t)
	k := vm.DebianKernel(t)
	// Nothing listens there: 13390-13399 is the slice no test here starts a target
	// in (a port from portLo up could be taken by a parallel boot's tgtd).
	closed := testtarget.FreePort(t, 13390, portHi)
	const secret = "never-in-the-console-1"
	tab := directTable("iqn.2026-01.org.isboot.test:missing", closed, "isboot-user", secret)
	v := vm.Start(t, vm.Config{
		Firmware: vm.Direct, Kernel: k.Image, Initrd: initrd,
		Cmdline:    "console=ttyS0 panic=-1 isboot.timeout=8 isboot.debug=1",
		ACPITables: []string{writeTable(t, tab)},
		NIC:        &vm.NIC{Model: "e1000", MAC: "52:54:00:12:34:56"},
	})
	ctx := context.Background()
	for _, want := range []string{
		`isboot: isboot vmtest as /init on Linux`,
		`isboot: iBFT found at acpi`,
		`isboot: network: \S+ is 10\.0\.2\.15/24`,
		`isboot: boot failed: wait for the LUN: .*iqn\.2026-01\.org\.isboot\.test:missing`,
		`isboot: starting the rescue shell`,
	} {
		if _, err := v.WaitFor(ctx, 120*time.Second, want); err != nil {
			t.Fatalf("%s: %v", want, err)
		}
	}
	time.Sleep(2 * time.Second) // let the shell print its prompt; PID 1 must still be alive
	con := v.Console()
	if strings.Contains(con, secret) {
		t.Error("the CHAP secret reached the console")
	}
	if regexp.MustCompile(`Kernel panic|Attempted to kill init`).MatchString(con) {
		t.Error("PID 1 died")
	}
	if n := strings.Count(con, "boot failed:"); n != 1 {
		t.Errorf("%d failure lines, want exactly one", n)
	}
	t.Logf("rescue reached %.1f s after QEMU start", v.Elapsed().Seconds())
	logBootStory(t, con)
}

// logBootStory shows isboot's own console lines under go test -v.
func logBootStory(t testing.TB, con string) {
	if !testing.Verbose() {
		return
	}
	var lines []string
	for _, l := range strings.Split(con, "\n") {
		if strings.Contains(l, "isboot") || strings.Contains(l, "switch_root") || strings.HasPrefix(l, "ISBOOT") || strings.Contains(l, "random") {
			lines = append(lines, l)
		}
	}
	t.Logf("boot story:\n%s", strings.Join(lines, "\n"))
}
