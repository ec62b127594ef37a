package initproc_test

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/rootimg"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// The target answers only after isboot.timeout: the boot fails once into the
// rescue shell, whose banner says the boot goes on when the target answers. Leaving
// the shell waits for the LUN again (and after another isboot.timeout the shell is
// back); then the target comes up, the daemon logs in, the shell is ended and the
// boot goes on to the real root.
func TestBootResumesWhenTargetAnswersLate(t *testing.T) {
	vm.Require(t)
	_, initrd := image(t)
	k := vm.DebianKernel(t)
	disk := filepath.Join(t.TempDir(), "disk.img")
	if err := rootimg.Make(disk, rootimg.Options{Init: realInit}); err != nil {
		t.Fatal(err)
	}
	port := testtarget.FreePort(t, portLo, 13379)
	iqn := "iqn.2026-01.org.isboot.test:late"
	v := vm.Start(t, vm.Config{
		Firmware: vm.Direct, Kernel: k.Image, Initrd: initrd,
		Cmdline:      "console=ttyS0 panic=-1 isboot.timeout=5",
		ACPITables:   []string{writeTable(t, directTable(iqn, port, "", ""))},
		NIC:          &vm.NIC{Model: "virtio-net-pci", MAC: "52:54:00:12:34:56"},
		ConsoleInput: true,
	})
	ctx := context.Background()
	wait := func(d time.Duration, re string) {
		t.Helper()
		if _, err := v.WaitFor(ctx, d, re); err != nil {
			t.Fatalf("%s: %v", re, err)
		}
	}
	wait(120*time.Second, `isboot: boot failed: wait for the LUN: no login to `+regexp.QuoteMeta(iqn))
	wait(10*time.Second, `the boot goes on by itself when the target answers`)
	wait(10*time.Second, `isboot: starting the rescue shell`)
	time.Sleep(3 * time.Second) // the shell reads the console
	if err := v.Type("exit\n"); err != nil {
		t.Fatal(err)
	}
	wait(30*time.Second, `isboot: rescue shell left: waiting for `+regexp.QuoteMeta(iqn))
	wait(30*time.Second, `isboot: still no login to `)
	wait(10*time.Second, `isboot: starting the rescue shell`) // the second time
	t0 := v.Elapsed()
	tgt := testtarget.StartTgtd(t, testtarget.TgtdOptions{Port: port, ControlPort: ctlBase, Backing: disk, IQN: iqn})
	t.Logf("target %s started %.1f s after QEMU start", tgt.IQN, t0.Seconds())
	wait(90*time.Second, `isboot: the target answered: .* is /dev/nbd0 .*; the boot goes on`)
	t.Logf("the boot went on %.1f s after the target started", (v.Elapsed() - t0).Seconds())
	wait(120*time.Second, `ISBOOT-ROOT-DONE`)
	if err := v.Wait(ctx, 60*time.Second); err != nil {
		t.Errorf("no clean power-off: %v", err)
	}
	con := v.Console()
	logBootStory(t, con)
	if n := strings.Count(con, "boot failed:"); n != 1 {
		t.Errorf("%d failure lines, want one", n)
	}
	if !strings.Contains(con, "ISBOOT-MARKER none") || strings.Contains(con, "ISBOOT-ERROR") {
		t.Errorf("the real root could not write through the LUN")
	}
	if regexp.MustCompile(`Kernel panic|Attempted to kill init`).MatchString(con) {
		t.Error("PID 1 died")
	}
}

// isboot.onfail=reboot:2: no rescue shell; the boot says why it failed, stops the
// daemon (which was still trying to log in) and restarts the machine 2 s later.
func TestBootOnFailReboot(t *testing.T) {
	vm.Require(t)
	_, initrd := image(t)
	k := vm.DebianKernel(t)
	closed := testtarget.FreePort(t, 13390, portHi)
	v := vm.Start(t, vm.Config{
		Firmware: vm.Direct, Kernel: k.Image, Initrd: initrd,
		Cmdline:    "console=ttyS0 panic=-1 isboot.timeout=3 isboot.onfail=reboot:2",
		ACPITables: []string{writeTable(t, directTable("iqn.2026-01.org.isboot.test:missing", closed, "", ""))},
		NIC:        &vm.NIC{Model: "e1000", MAC: "52:54:00:12:34:56"},
	})
	ctx := context.Background()
	for _, want := range []string{
		`isboot: boot failed: wait for the LUN: no login to `,
		`isboot: isboot.onfail=reboot: restarting the machine in 2 s`,
		`reboot: Restarting system`,
	} {
		if _, err := v.WaitFor(ctx, 120*time.Second, want); err != nil {
			t.Fatalf("%s: %v", want, err)
		}
	}
	// -no-reboot: the guest's restart ends QEMU.
	if err := v.Wait(ctx, 30*time.Second); err != nil && !strings.Contains(err.Error(), "exit status") {
		t.Errorf("QEMU after the reboot: %v", err)
	}
	con := v.Console()
	logBootStory(t, con)
	if strings.Contains(con, "starting the rescue shell") {
		t.Error("a rescue shell started despite isboot.onfail=reboot")
	}
	if !strings.Contains(con, "while logging in: stopped") {
		t.Error("the daemon was not stopped before the reboot")
	}
}
