package netcfg

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/initramfs"
	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/isboot/isboot/internal/testkit/vm"
	"github.com/vishvananda/netlink"
)

// The VM tests boot the Debian kernel with this package's test binary in a busybox
// initramfs. In the guest the NIC's driver is a module nobody has loaded, so
// TestGuestLoadsDriver exercises the real path: modalias from sysfs, modules.alias,
// kmodule, coldplug, the link appearing. The Debian kernel also has 802.1Q (this
// host's may not), so the netns tests run there too, TestApplyVLAN included.

// guestInit is /init. Settings arrive as environment variables from the kernel
// command line (the kernel hands unknown key=value words to init).
const guestInit = `#!/bin/busybox sh
export PATH=/bin
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /var/run /etc
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
for m in $(echo "$ISBNC_PRELOAD" | tr , ' '); do modprobe $m || echo "modprobe $m failed"; done
if /netcfg.test -test.v -test.timeout 5m -test.run "^($(echo "$ISBNC_RUN" | tr , '|'))\$"; then
	echo "ISBNC-RESULT=PASS"
else
	echo "ISBNC-RESULT=FAIL"
fi
poweroff -f
`

// guestSlot is the PCI slot QEMU puts the NIC in, so the iBFT BDF is known.
const guestSlot = 5

func TestVMLoadsDriver(t *testing.T) {
	vm.Require(t)
	k := vm.DebianKernel(t)
	busybox := testenv.LookPath(t, "VM test", "busybox")
	dir := t.TempDir()
	bin := filepath.Join(dir, "netcfg.test")
	build := exec.Command("go", "test", "-c", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the test binary: %v\n%s", err, out)
	}
	a := initramfs.New()
	for _, err := range []error{
		a.AddBytes("init", []byte(guestInit), 0o755),
		a.AddFile("bin/busybox", busybox, 0o755),
		a.AddFile("netcfg.test", bin, 0o755),
		// Present, not loaded: the NIC drivers; loaded by init: what the netns tests need.
		a.AddModules(k.Root, k.Version, "e1000", "virtio_pci", "virtio_net", "8021q", "veth"),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	initrd := filepath.Join(dir, "initrd.gz")
	if err := a.WriteFile(initrd); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		model string
		run   []string
	}{
		// The e1000 guest also runs the netns tests on a kernel with 802.1Q.
		{"e1000", []string{"TestGuestLoadsDriver", "TestApplyStaticIPv4", "TestApplyIPv6", "TestApplyVLAN", "TestApplyDHCPOrigin", "TestApplyMissingMAC"}},
		// virtio: virtio_pci first, then virtio_net for the virtio device it creates.
		{"virtio-net-pci", []string{"TestGuestLoadsDriver"}},
	} {
		t.Run(tc.model, func(t *testing.T) {
			t.Parallel()
			token := fmt.Sprintf("isb-nc-token-%d-%s", os.Getpid(), tc.model)
			port := serveToken(t, token)
			mac := "52:54:00:1b:00:05"
			v := vm.Start(t, vm.Config{
				Kernel: k.Image, Initrd: initrd, MemoryMB: 512,
				Cmdline: strings.Join([]string{"console=ttyS0 panic=-1 loglevel=3 no_timer_check",
					"ISBNC_GUEST=" + tc.model, "ISBNC_MAC=" + mac, "ISBNC_PORT=" + strconv.Itoa(port),
					"ISBNC_TOKEN=" + token, "ISBNC_PRELOAD=8021q,veth", "ISBNC_RUN=" + strings.Join(tc.run, ",")}, " "),
				ExtraArgs: []string{"-netdev", "user,id=n0",
					"-device", fmt.Sprintf("%s,netdev=n0,mac=%s,addr=%#x,romfile=", tc.model, mac, guestSlot)},
			})
			m, err := v.WaitFor(context.Background(), 5*time.Minute, `ISBNC-RESULT=(PASS|FAIL)`)
			out := v.Console()
			for _, l := range strings.Split(out, "\n") {
				if strings.Contains(l, "--- ") || strings.Contains(l, "took") || strings.Contains(l, "netcfg:") || strings.Contains(l, "guest:") {
					t.Log(strings.TrimSpace(l))
				}
			}
			if err != nil {
				t.Fatalf("guest: %v", err)
			}
			if m[1] != "PASS" {
				t.Fatalf("guest tests failed (console: %s)", v.ConsolePath())
			}
			// The guest must really have run them, not skipped them.
			for _, name := range tc.run {
				if !strings.Contains(out, "--- PASS: "+name+" ") {
					t.Errorf("guest did not pass %s", name)
				}
			}
			t.Logf("VM %s: %v from start to result", tc.model, v.Elapsed())
		})
	}
}

// serveToken listens on the host's loopback, which QEMU's user network shows the guest
// as 10.0.2.2, and answers every connection with token.
func serveToken(t *testing.T, token string) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	answerEach(t, l, func(net.Conn) string { return token })
	return l.Addr().(*net.TCPAddr).Port
}

// TestGuestLoadsDriver runs inside the VM of TestVMLoadsDriver: the NIC has no driver
// yet, and Apply must load it from the device's modalias and reach the host.
func TestGuestLoadsDriver(t *testing.T) {
	model := os.Getenv("ISBNC_GUEST")
	if model == "" {
		t.Skip("runs inside the VM of TestVMLoadsDriver")
	}
	m := mac(os.Getenv("ISBNC_MAC"))
	links, err := netlink.LinkList()
	must(t, err)
	for _, l := range links {
		if bytes.Equal(l.Attrs().HardwareAddr, m) {
			t.Fatalf("%s already has MAC %s: the driver is loaded, nothing to test", l.Attrs().Name, m)
		}
	}
	port, _ := strconv.Atoi(os.Getenv("ISBNC_PORT"))
	tb := &ibft.Table{
		Source: "guest",
		NICs: []ibft.NIC{{
			Index: 0, Flags: ibft.FlagValid | ibft.FlagBootSelected,
			IP: netip.MustParseAddr("10.0.2.15"), Prefix: 24, Origin: ibft.OriginDHCP,
			Gateway: netip.MustParseAddr("10.0.2.2"), DNS: [2]netip.Addr{netip.MustParseAddr("10.0.2.3")},
			DHCP: netip.MustParseAddr("10.0.2.2"), MAC: m, PCIBDF: guestSlot << 3, Hostname: "isb-guest",
		}},
		Targets: []ibft.Target{{Index: 0, Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("10.0.2.2"), Port: uint16(port), Name: "iqn.x:host"}},
	}
	p, err := NewPlan(tb, 0, Overrides{})
	must(t, err)
	start := time.Now()
	a, err := Apply(context.Background(), p, Options{ResolvConf: "/etc/resolv.conf", Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest: Apply took %v: %q", time.Since(start), a.Changes)
	want := map[string][]string{"e1000": {"e1000"}, "virtio-net-pci": {"virtio_pci", "virtio_net"}}[model]
	if !slices.Equal(a.Modules, want) {
		t.Errorf("loaded %q, want %q", a.Modules, want)
	}
	if h, _ := utsHostname(); h != "isb-guest" {
		t.Errorf("hostname %q, want isb-guest", h)
	}
	if dev, ok := pciDeviceOf("/sys", a.Link, m); !ok || dev != fmt.Sprintf("0000:00:%02x.0", guestSlot) {
		t.Errorf("%s is PCI %q (found %v), want slot %d", a.Link, dev, ok, guestSlot)
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort("10.0.2.2", strconv.Itoa(port)), 10*time.Second)
	if err != nil {
		t.Fatalf("connect to the host through %s: %v", a.Link, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if got := strings.TrimSpace(line); got != os.Getenv("ISBNC_TOKEN") {
		t.Errorf("host said %q (err %v), want the token", got, err)
	}
	if b, _ := os.ReadFile("/etc/resolv.conf"); !regexp.MustCompile(`(?m)^nameserver 10\.0\.2\.3$`).Match(b) {
		t.Errorf("resolv.conf:\n%s", b)
	}
}
