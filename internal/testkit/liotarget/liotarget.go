// Package liotarget runs LIO, the Linux kernel's own iSCSI target, as a test peer.
// The host kernel here has no LIO, so the target runs in a small QEMU guest of its
// own: the Debian kernel with target_core_mod, target_core_iblock and
// iscsi_target_mod, and cmd/lio-init as /init, which configures LIO through configfs
// (package configfs). The LUN is an iblock backstore on a virtio disk that is a file
// on the host, so the host can prepare it (a root image) and check it afterwards,
// and a killed target VM loses nothing it acknowledged. QEMU's user network forwards
// 127.0.0.1:Port on the host to the guest's portal: host initiators connect there,
// other guests at 10.0.2.2:Port.
//
//	tg := liotarget.Start(t, liotarget.Options{Port: p, Disk: img, CHAP: c, Mutual: m})
//	iscsi.Dial(ctx, iscsi.Config{Portals: []string{tg.Addr()}, TargetName: tg.IQN, ...})
//	tg.Pause(); tg.Resume()   // SIGSTOP/SIGCONT the whole VM
//	tg.Kill(); tg.Restart()   // power cut, then a fresh boot on the same disk
//
// Measured here under TCG: QEMU start to LIO-READY takes about 5-10 s.
package liotarget

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/liotarget/configfs"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// Defaults of Options.
const (
	DefaultIQN       = "iqn.2026-01.org.isboot.test:lio"
	DefaultInitiator = "iqn.2026-01.org.isboot.test:lio-initiator"
	DefaultSerial    = "isboot-lio-0001"
)

// Options describe the target VM.
type Options struct {
	Port      int    // host TCP port forwarded to the portal (required)
	Disk      string // host file behind the LUN (required)
	IQN       string // default DefaultIQN
	Initiator string // the one initiator the ACL admits; default DefaultInitiator
	LUN       int
	Serial    string          // VPD 0x80; default DefaultSerial
	CHAP      testtarget.CHAP // the initiator's account; empty: no authentication
	Mutual    testtarget.CHAP // the target's own account (mutual CHAP)
	Params    map[string]string
	MemoryMB  int // default 256
}

// Target is a running LIO VM. It satisfies testtarget.Target.
type Target struct {
	t      testing.TB
	o      Options
	initrd string
	kernel vm.Kernel
	vm     *vm.VM
	Boots  []time.Duration // QEMU start to LIO-READY, one per boot
}

// Start boots the target VM and waits until LIO listens; failures fail the test.
func Start(t testing.TB, o Options) *Target {
	t.Helper()
	vm.Require(t)
	if o.Port == 0 || o.Disk == "" {
		t.Fatal("liotarget: Options.Port and Options.Disk are required")
	}
	if o.IQN == "" {
		o.IQN = DefaultIQN
	}
	if o.Initiator == "" {
		o.Initiator = DefaultInitiator
	}
	if o.Serial == "" {
		o.Serial = DefaultSerial
	}
	if o.MemoryMB == 0 {
		o.MemoryMB = 256
	}
	tg := &Target{t: t, o: o, kernel: vm.DebianKernel(t)}
	tg.initrd = tg.buildInitrd()
	tg.boot()
	return tg
}

// buildInitrd packs lio-init, the target modules and the configuration. The
// configuration (with the CHAP secrets) goes into the initramfs, not onto the
// kernel command line, where ps on the host would show it.
func (tg *Target) buildInitrd() string {
	t := tg.t
	init := vm.BuildGo(t, "github.com/isboot/isboot/internal/testkit/liotarget/cmd/lio-init")
	a := vm.GuestArchive(t, init)
	if err := a.AddModules(tg.kernel.Root, tg.kernel.Version,
		"iscsi_target_mod", "target_core_iblock", "virtio_blk", "virtio_net", "virtio_pci",
		// LIO allocates its digest hash at every login, digests used or not; and
		// takes SHA3-256 for CHAP when it can (a real system autoloads these).
		"crc32c_generic", "sha3_generic"); err != nil {
		t.Fatal(err)
	}
	o := tg.o
	cfg := struct {
		Target  configfs.Target
		Address string
	}{configfs.Target{
		IQN: o.IQN, Initiator: o.Initiator, Device: "/dev/vda", Serial: o.Serial, LUN: o.LUN,
		CHAPUser: o.CHAP.User, CHAPSecret: o.CHAP.Secret, MutualUser: o.Mutual.User, MutualSecret: o.Mutual.Secret,
		Params: o.Params,
	}, "10.0.2.15/24"}
	if _, err := configfs.Plan(cfg.Target); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.AddBytes("etc/lio-target.json", b, 0o600); err != nil {
		t.Fatal(err)
	}
	return vm.WriteInitrd(t, a)
}

// boot starts a VM on the disk and waits for LIO-READY.
func (tg *Target) boot() {
	t := tg.t
	t.Helper()
	disk := strings.ReplaceAll(tg.o.Disk, ",", ",,")
	tg.vm = vm.Start(t, vm.Config{
		Firmware: vm.Direct, Kernel: tg.kernel.Image, Initrd: tg.initrd, MemoryMB: tg.o.MemoryMB,
		// loglevel=4 keeps LIO's login failures (pr_err) on the console.
		Cmdline: "console=ttyS0 loglevel=4 panic=-1",
		NIC:     &vm.NIC{Model: "virtio-net-pci", MAC: "52:54:00:11:0a:01"},
		HostFwd: []string{fmt.Sprintf("tcp:127.0.0.1:%d-:3260", tg.o.Port)},
		// The host's page cache holds what QEMU wrote, so a killed VM loses no
		// write LIO acknowledged.
		ExtraArgs: []string{"-drive", "file=" + disk + ",format=raw,if=virtio,cache=writeback"},
	})
	m, err := tg.vm.WaitFor(context.Background(), 180*time.Second, `LIO-(READY|FAILED[^\r\n]*)[\r\n]`)
	if err != nil {
		t.Fatalf("liotarget: %v", err)
	}
	if m[1] != "READY" {
		t.Fatalf("liotarget: %s", m[0])
	}
	tg.Boots = append(tg.Boots, tg.vm.Elapsed())
	t.Logf("liotarget: LIO ready at %s, %.1f s after QEMU start", tg.Addr(), tg.vm.Elapsed().Seconds())
}

// Addr is the portal on the host: "127.0.0.1:port".
func (tg *Target) Addr() string { return fmt.Sprintf("127.0.0.1:%d", tg.o.Port) }

// GuestAddr is the portal as another QEMU guest on user networking reaches it.
func (tg *Target) GuestAddr() string { return fmt.Sprintf("%s:%d", vm.HostAddr, tg.o.Port) }

// Port is the forwarded TCP port.
func (tg *Target) Port() int { return tg.o.Port }

func (tg *Target) TargetIQN() string { return tg.o.IQN }
func (tg *Target) LUNNumber() uint64 { return uint64(tg.o.LUN) }

// Initiator is the IQN the ACL admits.
func (tg *Target) Initiator() string { return tg.o.Initiator }

// Serial is the LUN's unit serial number.
func (tg *Target) Serial() string { return tg.o.Serial }

// VM is the running target VM (its console shows LIO's kernel messages).
func (tg *Target) VM() *vm.VM { return tg.vm }

// Pause freezes the whole target VM (SIGSTOP to QEMU): connections stay open and
// nothing answers.
func (tg *Target) Pause() {
	if err := tg.vm.Signal(syscall.SIGSTOP); err != nil {
		tg.t.Fatalf("liotarget: pause: %v", err)
	}
}

// Resume continues a paused VM.
func (tg *Target) Resume() {
	if err := tg.vm.Signal(syscall.SIGCONT); err != nil {
		tg.t.Fatalf("liotarget: resume: %v", err)
	}
}

// Kill cuts the target VM's power: its connections reset, no logout.
func (tg *Target) Kill() { tg.vm.Kill() }

// Restart boots a fresh target VM on the same disk, port and configuration.
func (tg *Target) Restart() {
	tg.t.Helper()
	tg.vm.Kill()
	tg.boot()
}

// ConsoleLog is where the current VM's console is captured.
func (tg *Target) ConsoleLog() string { return filepath.Join(tg.vm.Dir(), "console.log") }

var _ testtarget.Target = (*Target)(nil)
