package initproc_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/debroot"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// A Debian root with systemd, over iSCSI through isboot: it reaches multi-user.target,
// reads the status file, and powers off with systemctl. systemd's shutdown SIGTERMs
// and SIGKILLs every process but the "@" ones and remounts the root read-only at the
// end; the daemon must serve the LUN to the last write, so the filesystem is clean.
func TestBootSystemdRoot(t *testing.T) {
	vm.Require(t)
	img := debroot.ForTest(t)
	_, initrd := image(t)
	k := vm.DebianKernel(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := img.CopyTo(disk); err != nil {
		t.Fatal(err)
	}
	tgt := testtarget.StartTgtd(t, testtarget.TgtdOptions{
		Port: testtarget.FreePort(t, 13381, 13389), ControlPort: ctlBase + 1, Backing: disk})
	_, p, _ := net.SplitHostPort(tgt.Addr())
	port, _ := strconv.Atoi(p)
	hook := filepath.Join(dir, "hook")
	script := `pid=$(grep '^net.isboot.pid:' /run/isboot/status | cut -d' ' -f2)
line="HOOK-DAEMON $(tr '\0' ' ' < /proc/$pid/cmdline)"
echo "$line" > /dev/ttyS1 # whole there: no printk can split it
echo "$line"
echo "HOOK-STATE $(grep '^net.isboot.state:' /run/isboot/status)"
echo "HOOK-WRITE $(date +%s)" > /var/lib/isboot-test-write; sync
systemctl poweroff
`
	if err := os.WriteFile(hook, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	hookArgs, err := debroot.HookArgs(dir, hook, nil)
	if err != nil {
		t.Fatal(err)
	}
	v := vm.Start(t, vm.Config{
		Firmware: vm.Direct, Kernel: k.Image, Initrd: initrd,
		Cmdline:    "console=ttyS0 panic=-1 net.ifnames=0 root=UUID=" + debroot.FSUUID,
		ACPITables: []string{writeTable(t, directTable(tgt.IQN, port, "", ""))},
		NIC:        &vm.NIC{Model: "virtio-net-pci", MAC: "52:54:00:12:34:56"},
		MemoryMB:   768,
		ExtraArgs:  hookArgs,
	})
	ctx := context.Background()
	if _, err := v.WaitFor(ctx, 300*time.Second, debroot.MarkerReady); err != nil {
		t.Fatal(err)
	}
	t.Logf("multi-user.target over iSCSI after %.1f s", v.Elapsed().Seconds())
	if _, err := v.WaitFor(ctx, 60*time.Second, `HOOK-DAEMON`); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WaitForReport(ctx, 10*time.Second, `HOOK-DAEMON @isboot`); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WaitFor(ctx, 60*time.Second, `HOOK-STATE net.isboot.state: serving`); err != nil {
		t.Fatal(err)
	}
	if err := v.Wait(ctx, 180*time.Second); err != nil && !strings.Contains(err.Error(), "exit status") {
		t.Fatalf("poweroff: %v", err)
	}
	con := v.Console()
	logBootStory(t, con)
	if m := regexp.MustCompile(`(?i)(I/O error|Buffer I/O|blk_update_request|nbd\d+: .*(dead|timeout))`).FindString(con); m != "" {
		t.Errorf("block errors on the console: %s", m)
	}
	if !strings.Contains(con, "reboot: Power down") {
		t.Error("the guest did not power down")
	}
	// Every write systemd made on the way down reached the target.
	if out, err := exec.Command("e2fsck", "-fn", debroot.FSPath(disk)).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck after poweroff: %v\n%s", err, out)
	}
	out, err := exec.Command("debugfs", "-R", "cat /var/lib/isboot-test-write", debroot.FSPath(disk)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "HOOK-WRITE") {
		t.Errorf("the file written before poweroff is not on the target: %v %s", err, out)
	}
}
