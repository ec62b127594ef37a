package ibft_test

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/testtarget"
	"github.com/isboot/isboot/internal/vm"
)

// VM tier: a guest whose /init runs `isboot ibft --json` (testdata/vmguest) must
// print the table the firmware holds. Ports: tgtd on 13450-13459, control port 50
// (outside the other helpers' ranges).

func TestMain(m *testing.M) { os.Exit(vm.RunTests(m)) }

// guestInitrd packs isboot and the guest init (both built statically by the harness).
func guestInitrd(t *testing.T) string {
	t.Helper()
	a := vm.GuestArchive(t, vm.BuildGo(t, "./testdata/vmguest"))
	if err := a.AddFile("isboot", vm.BuildGo(t, "../cmd/isboot"), 0o755); err != nil {
		t.Fatal(err)
	}
	return vm.WriteInitrd(t, a)
}

var jsonReport = regexp.MustCompile(`(?s)IBFT-JSON-BEGIN\n(.*)IBFT-JSON-END rc=(-?\d+)`)

// bootAndRead boots the guest and returns what `isboot ibft --json` printed in it.
func bootAndRead(t *testing.T, cfg vm.Config, timeout time.Duration) map[string]any {
	t.Helper()
	cfg.Kernel = vm.DebianKernel(t).Image
	cfg.Initrd = guestInitrd(t)
	cfg.Cmdline = "console=ttyS0 quiet panic=-1"
	v := vm.Start(t, cfg)
	ctx := context.Background()
	if _, err := v.WaitFor(ctx, timeout, `IBFT-GUEST-DONE rc=-?\d+`); err != nil {
		t.Fatal(err)
	}
	v.Wait(ctx, 30*time.Second)
	report, err := v.Report()
	if err != nil {
		t.Fatal(err)
	}
	m := jsonReport.FindSubmatch(report)
	if m == nil {
		t.Fatalf("guest report lacks the JSON block:\n%s", report)
	}
	if string(m[2]) != "0" {
		t.Fatalf("isboot ibft exited %s in the guest; console:\n%s", m[2], v.Console())
	}
	var got map[string]any
	if err := json.Unmarshal(m[1], &got); err != nil {
		t.Fatalf("guest output is not JSON: %v\n%s", err, m[1])
	}
	t.Logf("%s: guest done %.1fs after QEMU start", cfg.Firmware, v.Elapsed().Seconds())
	return got
}

func jsonOf(t *testing.T, tb *ibft.Table) map[string]any {
	t.Helper()
	b, err := tb.JSON(false)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestVMInjectedACPI: a table injected with -acpitable is what `isboot ibft --json`
// prints in the guest, found through ACPI.
func TestVMInjectedACPI(t *testing.T) {
	vm.Require(t)
	t.Parallel()
	want := &ibft.Table{
		Signature: "iBFT", Revision: 1, OEMID: "ISBOOT", OEMTableID: "VMTEST",
		Initiator: ibft.Initiator{Flags: 3, Name: "iqn.2026-01.org.isboot.test:ibft-vm"},
		NICs: []ibft.NIC{{
			Flags: 3, IP: netip.MustParseAddr("10.0.2.15"), Prefix: 24, Origin: ibft.OriginManual,
			Gateway: netip.MustParseAddr("10.0.2.2"), DNS: [2]netip.Addr{netip.MustParseAddr("10.0.2.3")},
			VLAN: 0, MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, PCIBDF: 3 << 3, Hostname: "vmguest",
		}, {
			Index: 1, Flags: 1, IP: netip.MustParseAddr("2001:db8::15"), Prefix: 64, Origin: ibft.OriginRA,
			MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x57}, PCIBDF: 4 << 3,
		}},
		Targets: []ibft.Target{{
			Flags: 3, IP: netip.MustParseAddr("10.0.2.2"), Port: 3260, LUN: 1, LUNRaw: [8]byte{0, 1},
			CHAPType: ibft.CHAPMutual, Name: "iqn.2026-01.org.isboot.test:disk",
			CHAPName: "user", CHAPSecret: "secret-one", RevCHAPName: "target", RevCHAPSecret: "secret-two",
		}, {
			Index: 1, Flags: 1, IP: netip.MustParseAddr("2001:db8::2"), Port: 3261, NIC: 1,
			Name: "iqn.2026-01.org.isboot.test:disk6",
		}},
	}
	raw, err := ibft.Encode(want)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "ibft.bin")
	if err := os.WriteFile(file, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	got := bootAndRead(t, vm.Config{Firmware: vm.Direct, ACPITables: []string{file}}, 90*time.Second)
	want.Source = "acpi:/sys/firmware/acpi/tables/iBFT"
	if w := jsonOf(t, want); !reflect.DeepEqual(got, w) {
		t.Errorf("guest printed\n%v\nwant\n%v", got, w)
	}
}

// TestVMiPXEBIOS: after iPXE's BIOS sanhook, `isboot ibft --json` finds the table in
// base memory and prints what iPXE wrote. The guest is set up as the one that captured
// testdata/ibft/ipxe-bios.bin (same NIC, MAC and target name), so the output must equal
// that capture's JSON but for the target's run-time port and the source.
func TestVMiPXEBIOS(t *testing.T) {
	vm.Require(t)
	t.Parallel()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "ibft", "ipxe-bios.bin"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := ibft.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	iqn := want.Targets[0].Name
	tgt := testtarget.StartTgtd(t, testtarget.TgtdOptions{
		Port: testtarget.FreePort(t, 13450, 13459), ControlPort: 50, IQN: iqn, Size: 8 << 20,
	})
	_, p, _ := net.SplitHostPort(tgt.Addr())
	port, _ := strconv.Atoi(p)
	got := bootAndRead(t, vm.Config{
		Firmware: vm.BIOS,
		NIC:      &vm.NIC{Model: "virtio-net-pci", MAC: want.NICs[0].MAC.String()},
		IPXE:     vm.IPXE{Target: &vm.SANTarget{Port: port, LUN: 1, IQN: iqn}},
	}, 180*time.Second)

	src, _ := got["source"].(string)
	if !strings.HasPrefix(src, "mem:0x") {
		t.Errorf("source %q, want the base-memory scan", src)
	}
	want.Source = src
	want.Targets[0].Port = uint16(port)
	if w := jsonOf(t, want); !reflect.DeepEqual(got, w) {
		t.Errorf("guest printed\n%v\nwant (ipxe-bios.bin with this run's port)\n%v", got, w)
	}
}
