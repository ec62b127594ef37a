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
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
	"github.com/isboot/isboot/internal/testkit/vm/guest"
)

// VM tier: a guest whose /init runs `isboot ibft --json` (testdata/vmguest) must
// print the table the firmware holds. Ports: tgtd on 13450-13459, control ports 50-51
// (outside the other helpers' ranges).

func TestMain(m *testing.M) { os.Exit(vm.RunTests(m)) }

// guestInitrd packs isboot and the guest init (both built statically by the harness),
// and the iscsi_ibft module with what it needs, for --source sysfs.
func guestInitrd(t *testing.T, k vm.Kernel) string {
	t.Helper()
	a := vm.GuestArchive(t, vm.BuildGo(t, "./testdata/vmguest"))
	if err := a.AddFile("isboot", vm.BuildGo(t, "../cmd/isboot"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := a.AddModules(k.Root, k.Version, "iscsi_ibft"); err != nil {
		t.Fatal(err)
	}
	return vm.WriteInitrd(t, a)
}

var jsonReport = regexp.MustCompile(`(?s)IBFT-JSON-BEGIN source=(\w+)\n(.*?)IBFT-JSON-END rc=(-?\d+)`)

// bootAndRead boots the guest and returns, per source, what `isboot ibft --json
// --source S` printed in it.
func bootAndRead(t *testing.T, cfg vm.Config, sources []string, timeout time.Duration) map[string]map[string]any {
	t.Helper()
	k := vm.DebianKernel(t)
	cfg.Kernel = k.Image
	cfg.Initrd = guestInitrd(t, k)
	cfg.Cmdline = "console=ttyS0 quiet panic=-1 vmguest.sources=" + strings.Join(sources, ",")
	v := vm.Start(t, cfg)
	ctx := context.Background()
	if _, err := v.WaitFor(ctx, timeout, `IBFT-GUEST-DONE`); err != nil {
		t.Fatal(err)
	}
	v.Wait(ctx, 30*time.Second)
	if m := regexp.MustCompile(guest.ErrorPrefix + `.*`).FindString(v.Console()); m != "" {
		t.Errorf("the guest failed a step: %s", m)
	}
	report, err := v.Report()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]any{}
	for _, m := range jsonReport.FindAllSubmatch(report, -1) {
		src := string(m[1])
		if string(m[3]) != "0" {
			t.Errorf("isboot ibft --source %s exited %s in the guest; console:\n%s", src, m[3], v.Console())
			continue
		}
		var j map[string]any
		if err := json.Unmarshal(m[2], &j); err != nil {
			t.Fatalf("guest output for %s is not JSON: %v\n%s", src, err, m[2])
		}
		got[src] = j
	}
	if len(got) != len(sources) && !t.Failed() {
		t.Fatalf("guest reported %d of %d sources:\n%s", len(got), len(sources), report)
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
// prints in the guest, found through ACPI, and again rebuilt from the kernel's
// /sys/firmware/ibft after isboot loads iscsi_ibft (--source sysfs). The NICs name PCI
// functions the guest has (00:02.0 the NIC, 00:01.0 the ISA bridge), so the kernel
// links them and the PCI addresses survive the sysfs route.
func TestVMInjectedACPI(t *testing.T) {
	vm.Require(t)
	t.Parallel()
	want := &ibft.Table{
		Signature: "iBFT", Revision: 1, OEMID: "ISBOOT", OEMTableID: "VMTEST",
		Initiator: ibft.Initiator{Flags: 3, Name: "iqn.2026-01.org.isboot.test:ibft-vm"},
		NICs: []ibft.NIC{{
			Flags: 3, IP: netip.MustParseAddr("10.0.2.15"), Prefix: 24, Origin: ibft.OriginManual,
			Gateway: netip.MustParseAddr("10.0.2.2"), DNS: [2]netip.Addr{netip.MustParseAddr("10.0.2.3")},
			VLAN: 0, MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, PCIBDF: 2 << 3, Hostname: "vmguest",
		}, {
			Index: 1, Flags: 1, IP: netip.MustParseAddr("2001:db8::15"), Prefix: 64, Origin: ibft.OriginRA,
			MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x57}, PCIBDF: 1 << 3,
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
	got := bootAndRead(t, vm.Config{
		Firmware: vm.Direct, ACPITables: []string{file},
		NIC: &vm.NIC{Model: "virtio-net-pci", MAC: "52:54:00:12:34:56"},
	}, []string{"auto", "sysfs"}, 90*time.Second)
	for src, source := range map[string]string{"auto": "acpi:/sys/firmware/acpi/tables/iBFT", "sysfs": "sysfs:/sys/firmware/ibft"} {
		want.Source = source
		if w := jsonOf(t, want); !reflect.DeepEqual(got[src], w) {
			t.Errorf("--source %s: guest printed\n%v\nwant\n%v", src, got[src], w)
		}
	}
}

// TestVMiPXEBIOS: after iPXE's BIOS sanhook, `isboot ibft --json` finds the table in
// base memory and prints what iPXE wrote; so does --source sysfs.
func TestVMiPXEBIOS(t *testing.T) {
	vm.Require(t)
	t.Parallel()
	checkIPXE(t, vm.BIOS, "ipxe-bios.bin", 13540, 61, "mem:0x", 180*time.Second)
}

// TestVMiPXEUEFI: under OVMF, iPXE installs the table in ACPI, where isboot finds it.
func TestVMiPXEUEFI(t *testing.T) {
	vm.Require(t)
	t.Parallel()
	checkIPXE(t, vm.UEFI, "ipxe-uefi.bin", 13545, 62, "acpi:/sys/firmware/acpi/tables/iBFT", 240*time.Second)
}

// checkIPXE boots a guest set up as the one that captured testdata/ibft/<fixture>
// (same NIC, MAC and target name, a tgtd from ports portLo..portLo+4), so what
// `isboot ibft --json` prints must equal the capture's JSON but for the target's
// run-time port and the source.
func checkIPXE(t *testing.T, fw vm.Firmware, fixture string, portLo, controlPort int, source string, timeout time.Duration) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "ibft", fixture))
	if err != nil {
		t.Fatal(err)
	}
	want, err := ibft.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	iqn := want.Targets[0].Name
	tgt := testtarget.StartTgtd(t, testtarget.TgtdOptions{
		Port: testtarget.FreePort(t, portLo, portLo+4), ControlPort: controlPort, IQN: iqn, Size: 8 << 20,
	})
	_, p, _ := net.SplitHostPort(tgt.Addr())
	port, _ := strconv.Atoi(p)
	got := bootAndRead(t, vm.Config{
		Firmware: fw,
		NIC:      &vm.NIC{Model: "virtio-net-pci", MAC: want.NICs[0].MAC.String()},
		IPXE:     vm.IPXE{Target: &vm.SANTarget{Port: port, LUN: 1, IQN: iqn}},
	}, []string{"auto", "sysfs"}, timeout)

	src, _ := got["auto"]["source"].(string)
	if !strings.HasPrefix(src, source) {
		t.Errorf("source %q, want %s...", src, source)
	}
	want.Targets[0].Port = uint16(port)
	for s, source := range map[string]string{"auto": src, "sysfs": "sysfs:/sys/firmware/ibft"} {
		want.Source = source
		if w := jsonOf(t, want); !reflect.DeepEqual(got[s], w) {
			t.Errorf("--source %s: guest printed\n%v\nwant (%s with this run's port)\n%v", s, got[s], fixture, w)
		}
	}
}
