package nbd_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/initramfs"
	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// guestScript is /init of the guest: it attaches a disk with `isboot serve --attach`
// (two sockets), mounts ext4 from its first partition, and checks that I/O survives
// the serving process being killed and replaced (RECONFIGURE) and being stopped.
// @SOURCE@ is the serve command's backend, @NETWORK@ the guest's network setup.
const guestScript = `#!/bin/busybox sh
export PATH=/bin
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /mnt
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /mnt
fail() {
	echo "RESULT=FAIL $*"
	for f in /tmp/serve*.log; do echo "--- $f"; cat $f; done
	dmesg | tail -60
	poweroff -f
}
step() { echo "STEP $*"; }
modprobe nbd max_part=16 nbds_max=2 || fail "modprobe nbd"
modprobe crc32c_generic
modprobe ext4 || fail "modprobe ext4"
@NETWORK@
SERVE="isboot serve @SOURCE@ --attach /dev/nbd0 --connections 2 --timeout 15s --dead-conn-timeout 120s"
$SERVE 2>/tmp/serve1.log &
S1=$!
# The pid file appears in the middle of NBD_CMD_CONNECT; the log line once it returned.
for i in $(seq 300); do grep -q "serving /dev/nbd0" /tmp/serve1.log && break; sleep 0.1; done
grep -q "serving /dev/nbd0" /tmp/serve1.log || fail "nbd0 not attached: $(cat /tmp/serve1.log)"
[ -e /sys/block/nbd0/pid ] || fail "nbd0 has no pid file"
# Attach raises the driver's 128 KiB request limit (to 4 MiB, or the hardware limit).
msk=$(cat /sys/block/nbd0/queue/max_sectors_kb); hwk=$(cat /sys/block/nbd0/queue/max_hw_sectors_kb)
[ "$msk" -ge 1024 ] || [ "$msk" = "$hwk" ] || fail "max_sectors_kb $msk (hardware $hwk)"
[ "$(cat /sys/block/nbd0/queue/read_ahead_kb)" = 1024 ] || fail "read_ahead_kb $(cat /sys/block/nbd0/queue/read_ahead_kb)"
step "queue: max_sectors_kb $msk of $hwk, read_ahead_kb 1024"
for i in $(seq 50); do
	[ -e /dev/nbd0p1 ] && break
	blockdev --rereadpt /dev/nbd0
	sleep 0.1
done
[ -e /dev/nbd0p1 ] || fail "no nbd0p1: size $(cat /sys/block/nbd0/size), $(ls /sys/block/nbd0 | tr '\n' ' ')"
step "nbd0p1 appeared, size $(cat /sys/block/nbd0/size) sectors"
mount -t ext4 /dev/nbd0p1 /mnt || fail "mount"
dd if=/dev/urandom of=/tmp/src bs=1M count=24 2>/dev/null
cp /tmp/src /mnt/a && sync || fail "write a"
echo 3 > /proc/sys/vm/drop_caches
cmp /tmp/src /mnt/a || fail "a differs after write, sync, drop caches"
step "ext4 write/sync/verify ok"

# writer rewrites /tmp/src8 into $1 with direct I/O until /tmp/stop exists, so I/O
# is in flight whenever something happens to the server.
dd if=/dev/urandom of=/tmp/src8 bs=1M count=8 2>/dev/null
writer() {
	while [ ! -e /tmp/stop ]; do
		dd if=/tmp/src8 of=$1 bs=16k oflag=direct conv=notrunc 2>/tmp/dd.log || return 1
	done
}
finish() { # $1: file the writer wrote, $2: what happened
	touch /tmp/stop
	wait $D || fail "I/O failed across $2: $(cat /tmp/dd.log)"
	rm /tmp/stop
	sync; echo 3 > /proc/sys/vm/drop_caches
	cmp /tmp/src8 $1 || fail "$1 differs after $2"
}

if isboot serve @SOURCE@ --attach /dev/nbd0 2>/tmp/serve3.log; then fail "a second server took over a live device"; fi
grep -q "another server still serves it" /tmp/serve3.log || fail "second server: $(cat /tmp/serve3.log)"
step "a live device is refused to another server"

isboot serve --mem 16M --attach 2>/tmp/serve4.log &
S4=$!
for i in $(seq 100); do grep -q "serving /dev/nbd" /tmp/serve4.log && break; sleep 0.1; done
grep -q "serving /dev/nbd1 (16777216 bytes" /tmp/serve4.log || fail "bare --attach: $(cat /tmp/serve4.log)"
[ "$(blockdev --getsize64 /dev/nbd1)" = 16777216 ] || fail "nbd1 size $(blockdev --getsize64 /dev/nbd1)"
kill -TERM $S4
wait $S4 || fail "bare --attach server exit status $?"
[ -e /sys/block/nbd1/pid ] && fail "nbd1 still connected after clean stop"
step "bare --attach took the first free device (nbd1) and disconnected cleanly"

# Stopped past the request timeout, the server loses a socket (the kernel times the
# request out, shuts the socket down and sends LINK_DEAD) and must replace it itself.
kill -STOP $S1
dd if=/dev/nbd0 of=/dev/null bs=4k count=1 skip=3000 iflag=direct 2>/tmp/dd0.log &
R=$!
sleep 20
kill -CONT $S1
wait $R || fail "raw read failed across a long SIGSTOP: $(cat /tmp/dd0.log)"
for i in $(seq 50); do grep -q "fresh sockets with RECONFIGURE" /tmp/serve1.log && break; sleep 0.1; done
grep -q "fresh sockets with RECONFIGURE" /tmp/serve1.log || fail "the server did not replace the socket the kernel dropped"
step "long SIGSTOP: socket replaced after LINK_DEAD, read completed"

writer /mnt/b &
D=$!
sleep 1
kill -9 $S1
step "killed server $S1 during I/O"
sleep 1
$SERVE 2>/tmp/serve2.log &
S2=$!
sleep 2
finish /mnt/b "the restart"
grep -q "taking it over with RECONFIGURE" /tmp/serve2.log || fail "second server did not take over with RECONFIGURE"
step "restart with RECONFIGURE ok"

writer /mnt/c &
D=$!
sleep 1
kill -STOP $S2
step "stopped server $S2"
sleep 4
kill -CONT $S2
sleep 1
finish /mnt/c "SIGSTOP/SIGCONT"
step "SIGSTOP/SIGCONT ok"

writer /mnt/d &
D=$!
sleep 1
kill -STOP $S2
step "stopped server $S2 beyond the 15 s request timeout"
sleep 22
kill -CONT $S2
sleep 2
finish /mnt/d "a long SIGSTOP"
cmp /tmp/src /mnt/a || fail "a differs at the end"
step "long SIGSTOP during ext4 I/O ok"

umount /mnt || fail "umount"
kill -TERM $S2
wait $S2 || fail "server exit status $? after SIGTERM"
[ -e /sys/block/nbd0/pid ] && fail "nbd0 still connected after clean stop"
if dmesg | grep -E "I/O error|Buffer I/O|EXT4-fs error|blk_update_request"; then fail "I/O errors in the kernel log"; fi
dmesg | grep -E "nbd" | tail -20
echo "RESULT=PASS"
poweroff -f
`

// guestNetwork brings up the virtio NIC with QEMU user networking's fixed addresses;
// the host's 127.0.0.1 is 10.0.2.2 from the guest.
const guestNetwork = `modprobe virtio_pci; modprobe virtio_net
for i in $(seq 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
ip link set lo up; ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 || fail "network"`

// TestKernelAttachVM serves a file inside the guest: the kernel attach on its own.
func TestKernelAttachVM(t *testing.T) {
	vm.Require(t)
	disk := ext4Disk(t)
	runAttachVM(t, disk, "--image /disk.img", "", nil)
}

// TestKernelAttachISCSIVM serves a tgtd LUN on the host: the whole gateway, with the
// iSCSI session re-established by each new serving process.
func TestKernelAttachISCSIVM(t *testing.T) {
	vm.Require(t)
	disk := ext4Disk(t)
	d := testtarget.StartTgtd(t, testtarget.TgtdOptions{Port: testtarget.FreePort(t, 13400, 13449),
		ControlPort: 43, Backing: disk})
	_, port, _ := strings.Cut(d.Addr(), ":")
	source := fmt.Sprintf("--portal 10.0.2.2:%s --target %s --lun 1", port, d.IQN)
	runAttachVM(t, "", source, guestNetwork, &vm.NIC{Model: "virtio-net-pci"})
}

// ext4Disk makes a 128 MiB GPT disk image whose first partition holds ext4.
func ext4Disk(t *testing.T) string {
	testenv.RequireTools(t, "VM test", "sgdisk", "mkfs.ext4")
	disk := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 128<<20); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{
		{"sgdisk", "-o", "-n", "1:2048:0", "-t", "1:8300", disk},
		{"mkfs.ext4", "-q", "-F", "-E", "offset=1048576", disk, "120M"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%q: %v\n%s", c, err, out)
		}
	}
	return disk
}

// runAttachVM boots the guest script with isboot and, if disk is set, the disk image
// as /disk.img in the initramfs.
func runAttachVM(t *testing.T, disk, source, network string, nic *vm.NIC) {
	k := vm.DebianKernel(t)
	busybox := testenv.LookPath(t, "VM test", "busybox")
	dir := t.TempDir()
	bin := filepath.Join(dir, "isboot")
	build := exec.Command("go", "build", "-o", bin, "github.com/isboot/isboot/cmd/isboot")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build isboot: %v\n%s", err, out)
	}
	script := strings.NewReplacer("@SOURCE@", source, "@NETWORK@", network).Replace(guestScript)
	a := initramfs.New()
	steps := []error{
		a.AddBytes("init", []byte(script), 0o755),
		a.AddFile("bin/busybox", busybox, 0o755),
		a.AddFile("bin/isboot", bin, 0o755),
		a.AddModules(k.Root, k.Version, "nbd", "ext4", "crc32c_generic"),
	}
	if disk != "" {
		steps = append(steps, a.AddFile("disk.img", disk, 0o644))
	}
	if nic != nil {
		steps = append(steps, a.AddModules(k.Root, k.Version, "virtio_pci", "virtio_net"))
	}
	for _, err := range steps {
		if err != nil {
			t.Fatal(err)
		}
	}
	initrd := filepath.Join(dir, "initrd.gz")
	if err := a.WriteFile(initrd); err != nil {
		t.Fatal(err)
	}
	v := vm.Start(t, vm.Config{Kernel: k.Image, Initrd: initrd, MemoryMB: 1024, CPUs: 2, NIC: nic,
		Cmdline: "console=ttyS0 panic=-1 loglevel=4"})
	m, err := v.WaitFor(context.Background(), 10*time.Minute, `RESULT=(PASS|FAIL[^\r\n]*)\r?\n`)
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	v.Wait(context.Background(), time.Minute) // the guest powers off after its report
	for _, l := range strings.Split(v.Console(), "\n") {
		if strings.HasPrefix(l, "STEP ") || strings.Contains(l, "nbd") {
			t.Log(strings.TrimSpace(l))
		}
	}
	if m[1] != "PASS" {
		con := v.Console()
		if i := strings.Index(con, "Run /init"); i >= 0 {
			con = con[i:]
		}
		t.Fatalf("guest: %s\nconsole from /init on:\n%s", m[1], con)
	}
}
