package distro

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
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/testkit/debroot"
	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// This package's slice of the shared ranges (see testtarget): TCP 13560-13569,
// tgtd control ports 65-66. Its tests run one after another: one VM at a time.
const (
	portLo, portHi = 13560, 13569
	ctlBase        = 65
)

// The versions of the two packages the tests build: the sysroot gets the first, the
// running guest is upgraded to the second.
const (
	debVersion     = "0.0~vmtest1"
	upgradeVersion = "0.0~vmtest2"
)

var debs struct {
	once             sync.Once
	dir              string
	install, upgrade string
	err              error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if debs.dir != "" {
		os.RemoveAll(debs.dir)
	}
	os.Exit(code)
}

// packages builds isboot and the two .debs as `make deb` does, with a fixed
// SOURCE_DATE_EPOCH so that unchanged sources give the same bytes (and the sysroot
// cache hits).
func packages(t *testing.T) (install, upgrade string) {
	t.Helper()
	debs.once.Do(func() {
		debs.dir, debs.err = os.MkdirTemp("", "isboot-distro-")
		if debs.err != nil {
			return
		}
		repo, _ := filepath.Abs(filepath.Join("..", "..", ".."))
		bin := filepath.Join(debs.dir, "isboot")
		build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-trimpath",
			"-ldflags=-s -w -X main.Version=vmtest", "-o", bin, "./cmd/isboot")
		build.Dir = repo
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			debs.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		for _, v := range []struct {
			version string
			path    *string
		}{{debVersion, &debs.install}, {upgradeVersion, &debs.upgrade}} {
			mk := exec.Command("bash", filepath.Join(repo, "initramfs/distro/debian/mkdeb.sh"), bin, v.version, debs.dir)
			mk.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1767225600")
			out, err := mk.Output()
			if err != nil {
				debs.err = fmt.Errorf("mkdeb.sh %s: %v\n%s", v.version, err, out)
				return
			}
			*v.path = strings.TrimSpace(string(out))
		}
	})
	if debs.err != nil {
		t.Fatal(debs.err)
	}
	return debs.install, debs.upgrade
}

// iBFT for QEMU's user network: the guest is 10.0.2.15, the target on the host 10.0.2.2.
func table(t *testing.T, iqn string, port int) string {
	t.Helper()
	raw, err := ibft.Encode(&ibft.Table{
		OEMID: "ISBOOT", OEMTableID: "DISTRO",
		Initiator: ibft.Initiator{Flags: ibft.FlagValid | ibft.FlagBootSelected, Name: "iqn.2026-01.org.isboot.test:distro"},
		NICs: []ibft.NIC{{
			Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("10.0.2.15"), Prefix: 24,
			Origin: ibft.OriginManual, Gateway: netip.MustParseAddr(vm.HostAddr),
			MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, PCIBDF: 2 << 3, // -nodefaults puts the NIC at 00:02.0
		}},
		Targets: []ibft.Target{{
			Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr(vm.HostAddr), Port: uint16(port),
			LUN: 1, LUNRaw: [8]byte{0, 1}, Name: iqn,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ibft.bin")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// hook runs in the booted guest: it reports the daemon, upgrades the package when
// handed one, reports the daemon again, writes a file and powers off.
const hook = `status=/run/isboot/status
pid=$(grep '^net.isboot.pid:' $status | cut -d' ' -f2)
# Also on ttyS1, where no printk or systemd status line can split it.
line="HOOK-DAEMON pid=$pid comm=$(cat /proc/$pid/comm) argv0=$(tr '\0' ' ' < /proc/$pid/cmdline)"
echo "$line" > /dev/ttyS1
echo "$line"
echo "HOOK-STATE $(grep '^net.isboot.state:' $status)"
echo "HOOK-ROOT $(findmnt -n -o SOURCE /)"
echo "HOOK-CGROUP $(tr '\n' ' ' < /proc/$pid/cgroup)"
if [ -f isboot-upgrade.deb ]; then
	# The trigger runs update-initramfs, which then stops at once: mkinitramfs under
	# TCG takes tens of minutes. The image's own build already ran it (apt, chroot).
	echo update_initramfs=no > /etc/initramfs-tools/update-initramfs.conf
	t0=$(date +%s)
	dpkg -i isboot-upgrade.deb > /tmp/upgrade.log 2>&1
	echo "HOOK-UPGRADE rc=$? version=$(dpkg-query -W -f='${Version}' isboot) in $(( $(date +%s) - t0 )) s"
	sed 's/^/HOOK-UPGRADE-LOG /' /tmp/upgrade.log
	sleep 6 # a status rewrite (every 5 s) after the upgrade
	echo "HOOK-AFTER pid=$(grep '^net.isboot.pid:' $status | cut -d' ' -f2) alive=$(kill -0 $pid 2>/dev/null && echo yes || echo no) comm=$(cat /proc/$pid/comm) $(grep '^net.isboot.state:' $status)"
fi
echo "HOOK-WRITE $(date +%s)" > /var/lib/isboot-test-write; sync
systemctl poweroff
`

// boot boots the flavour's sysroot from a tgtd LUN through its own kernel and
// initramfs, with the iBFT as an ACPI table, and checks what the issue asks: systemd
// reaches multi-user, the daemon is alive as isboot, the package upgrade leaves it
// serving, systemctl poweroff powers off and the filesystem is clean.
func boot(t *testing.T, fl Flavour, slot int, cmdline string, upgrade bool) {
	vm.Require(t)
	testenv.RequireTools(t, "distro VM test", "dpkg-deb", "chroot", "sgdisk", "mke2fs", "e2fsck", "debugfs")
	base := debroot.ForTest(t)
	deb, upDeb := packages(t)
	sr, err := Build(context.Background(), base, fl, deb, Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	if sr.Built {
		t.Logf("distro: built the %s sysroot (kernel %s) in %v", fl.Name, sr.KernelVer, sr.Took.Round(time.Second))
	}
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := (debroot.Image{Path: sr.Disk}).CopyTo(disk); err != nil {
		t.Fatal(err)
	}
	tgt := testtarget.StartTgtd(t, testtarget.TgtdOptions{
		Port: testtarget.FreePort(t, portLo+5*slot, portLo+5*slot+4), ControlPort: ctlBase + slot, Backing: disk})
	_, p, _ := net.SplitHostPort(tgt.Addr())
	port, _ := strconv.Atoi(p)

	script := filepath.Join(dir, "hook")
	if err := os.WriteFile(script, []byte(hook), 0o644); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	if upgrade {
		files["isboot-upgrade.deb"] = upDeb
	}
	hookArgs, err := debroot.HookArgs(dir, script, files)
	if err != nil {
		t.Fatal(err)
	}
	v := vm.Start(t, vm.Config{
		Firmware: vm.Direct, Kernel: sr.Kernel, Initrd: sr.Initrd,
		Cmdline:    "console=ttyS0 panic=-1 net.ifnames=0 root=UUID=" + debroot.FSUUID + " ro " + cmdline,
		ACPITables: []string{table(t, tgt.IQN, port)},
		NIC:        &vm.NIC{Model: "virtio-net-pci", MAC: "52:54:00:12:34:56"},
		MemoryMB:   1024,
		ExtraArgs:  hookArgs,
	})
	ctx := context.Background()
	if _, err := v.WaitFor(ctx, 300*time.Second, `isboot: /dev/nbd0 is ready for the `+fl.Name+` initramfs`); err != nil {
		t.Fatal(err)
	}
	attached := v.Elapsed()
	if _, err := v.WaitFor(ctx, 300*time.Second, debroot.MarkerReady); err != nil {
		t.Fatal(err)
	}
	ready := v.Elapsed()
	if _, err := v.WaitFor(ctx, 60*time.Second, `HOOK-DAEMON pid=`); err != nil {
		t.Fatal(err)
	}
	m, err := v.WaitForReport(ctx, 10*time.Second, `HOOK-DAEMON pid=(\d+) comm=(\S*) argv0=(\S*)`)
	if err != nil {
		t.Fatal(err)
	}
	pid := m[1]
	if m[2] != "isboot" || m[3] != "@isboot" {
		t.Errorf("daemon pid %s: comm %q argv0 %q, want isboot and @isboot", pid, m[2], m[3])
	}
	for _, want := range []string{`HOOK-STATE net.isboot.state: serving`, `HOOK-ROOT /dev/nbd0p1`} {
		if _, err := v.WaitFor(ctx, 30*time.Second, regexp.QuoteMeta(want)); err != nil {
			t.Errorf("%s: %v", want, err)
		}
	}
	// In no service's cgroup: the root one, or PID 1's init.scope, where systemd puts
	// what it found in the root cgroup at start. A unit stop never takes it along.
	if _, err := v.WaitFor(ctx, 30*time.Second, `HOOK-CGROUP 0::/(init\.scope)? `); err != nil {
		t.Errorf("the daemon's cgroup: %v", err)
	}
	if upgrade {
		m, err := v.WaitFor(ctx, 600*time.Second, `HOOK-UPGRADE rc=(\d+) version=(\S*) in (\d+) s`)
		if err != nil {
			t.Fatal(err)
		}
		if m[1] != "0" || m[2] != upgradeVersion {
			t.Errorf("upgrade: dpkg exit %s, version %s; want 0 and %s", m[1], m[2], upgradeVersion)
		}
		t.Logf("package upgraded to %s on the running system in %s s", m[2], m[3])
		want := `HOOK-AFTER pid=` + pid + ` alive=yes comm=isboot net.isboot.state: serving`
		if _, err := v.WaitFor(ctx, 60*time.Second, regexp.QuoteMeta(want)); err != nil {
			t.Errorf("after the upgrade, want %q: %v", want, err)
		}
	}
	if err := v.Wait(ctx, 240*time.Second); err != nil && !strings.Contains(err.Error(), "exit status") {
		t.Fatalf("poweroff: %v", err)
	}
	t.Logf("%s: /dev/nbd0 at %.1f s, multi-user at %.1f s, powered off at %.1f s after QEMU start",
		fl.Name, attached.Seconds(), ready.Seconds(), v.Elapsed().Seconds())
	con := v.Console()
	logBootStory(t, con)
	if m := regexp.MustCompile(`(?i)(I/O error|Buffer I/O|blk_update_request|nbd\d+: .*(dead|timeout))`).FindString(con); m != "" {
		t.Errorf("block errors on the console: %s", m)
	}
	if !strings.Contains(con, "reboot: Power down") {
		t.Error("the guest did not power down")
	}
	if out, err := exec.Command("e2fsck", "-fn", debroot.FSPath(disk)).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck after poweroff: %v\n%s", err, out)
	}
	out, err := exec.Command("debugfs", "-R", "cat /var/lib/isboot-test-write", debroot.FSPath(disk)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "HOOK-WRITE") {
		t.Errorf("the file written before poweroff is not on the target: %v %s", err, out)
	}
}

// Debian's default: initramfs-tools runs local-top/isboot, which attaches the LUN;
// init mounts root=UUID= from /dev/nbd0p1 and run-init starts systemd. The package
// is then upgraded on the running system with dpkg (its update-initramfs trigger
// runs; the daemon must not notice).
func TestInitramfsToolsBootsFromISCSI(t *testing.T) {
	boot(t, InitramfsTools, 0, "", true)
}

// dracut with systemd in the initramfs: the cmdline hook queues isboot-attach, the
// initqueue runs it, systemd mounts /sysroot and switches root; the daemon, in the
// root cgroup and named @isboot, survives both.
func TestDracutBootsFromISCSI(t *testing.T) {
	boot(t, Dracut, 1, "rd.emergency=poweroff", false)
}

// logBootStory shows the initramfs's and isboot's lines under go test -v.
func logBootStory(t *testing.T, con string) {
	if !testing.Verbose() {
		return
	}
	var lines []string
	for _, l := range strings.Split(con, "\n") {
		if strings.Contains(l, "isboot") || strings.Contains(l, "local-top") || strings.Contains(l, "Switching root") ||
			strings.Contains(l, "dracut") || strings.HasPrefix(l, "ISBOOT") || strings.HasPrefix(l, "HOOK") {
			lines = append(lines, strings.TrimRight(l, "\r"))
		}
	}
	t.Logf("boot story:\n%s", strings.Join(lines, "\n"))
}
