// Package vm boots QEMU guests for tests, under TCG (no KVM here), in three
// firmware modes:
//
//   - Direct: -kernel/-initrd/-append, optionally with extra ACPI tables
//     (-acpitable file=..., e.g. an iBFT).
//   - BIOS: SeaBIOS runs the iPXE option ROM of the NIC, which DHCPs from
//     QEMU's user network, fetches a generated script over TFTP and runs it:
//     dhcp (or a static address), optional `sanhook` of an iSCSI target on the
//     host (CHAP and mutual CHAP optional), then kernel/initrd/boot over TFTP.
//     iPXE leaves the iBFT in hidden base memory (0x80000-0xFFFFF) at sanhook.
//   - UEFI: the same under OVMF with the NIC's EFI iPXE ROM; iPXE installs the
//     iBFT as an ACPI table. This old iPXE (Debian's 1.0.0+git-20190125) needs
//     initrd=<name> on the kernel line, which the script adds.
//
// Usage:
//
//	func TestMain(m *testing.M) { os.Exit(vm.RunTests(m)) } // removes BuildGo's output
//
//	vm.Require(t)                      // skips under -short, without root or QEMU
//	k := vm.DebianKernel(t)            // the kernel `make deps` unpacked
//	a := vm.GuestArchive(t, vm.BuildGo(t, "./testdata/guest")) // /init, /dev/console, ...
//	v := vm.Start(t, vm.Config{
//		Firmware: vm.BIOS,
//		Kernel:   k.Image, Initrd: vm.WriteInitrd(t, a), Cmdline: "console=ttyS0",
//		NIC:      &vm.NIC{Model: "virtio-net-pci", MAC: "52:54:00:aa:bb:01"},
//		IPXE:     vm.IPXE{Target: &vm.SANTarget{Port: 13300, LUN: 1, IQN: iqn}},
//	})
//	m, err := v.WaitFor(ctx, 60*time.Second, `RESULT=(\w+)`)
//
// The guest side (mounting /proc /sys /dev, loading the modules the archive
// holds, the report channel, power-off) is package vm/guest; the smoke guest
// in testdata/guestinit shows it in use.
//
// The guest's reachable host is 10.0.2.2 (QEMU user networking maps it to the
// host's 127.0.0.1), so targets listen on 127.0.0.1. The guest's first serial
// port (ttyS0) is the console, captured to console.log in the VM's directory
// and in memory for WaitFor; the second (ttyS1) is a clean report channel
// written to report.log (read it with Report). HostFwd rules add further
// channels. Every VM has its own temporary directory, so tests may run VMs in
// parallel. QEMU runs in its own process group with a parent-death signal and
// is killed in t.Cleanup, so it never outlives the test, also on failure or
// timeout; on failure the console's tail is logged.
//
// Firmware details that cost time to find:
//   - SeaBIOS writes to the serial port only with -machine graphics=off (set
//     here), so iPXE's messages ("Registered SAN device 0x80") reach the console.
//   - Debian's virtio iPXE ROMs carry the modern device id 1af4:1041; SeaBIOS
//     skips a ROM whose id differs from the device's, so virtio-net-pci gets
//     disable-legacy=on in the iPXE modes (Linux's virtio_pci drives it alike).
//   - iPXE hides its base memory (and the iBFT in it) from the e820 map, which
//     is why /dev/mem shows it below 1 MiB where ordinary RAM reads as zeros.
//
// Measured here under TCG (2 shared cores, other tests running): QEMU start
// to /init is ~9 s direct (kernel ~3 s of it, the rest SeaBIOS and the
// decompressor), ~16-24 s via iPXE BIOS (2 s iPXE banner, 3 s DHCP twice:
// ROM autoboot and the script's dhcp), ~30-35 s via OVMF (~11 s to iPXE).
package vm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/childproc"
)

// Firmware selects how the guest boots.
type Firmware int

const (
	Direct Firmware = iota // -kernel/-initrd/-append
	BIOS                   // SeaBIOS + iPXE option ROM, kernel over TFTP
	UEFI                   // OVMF + iPXE EFI ROM, kernel over TFTP
)

func (f Firmware) String() string {
	switch f {
	case Direct:
		return "direct"
	case BIOS:
		return "bios"
	case UEFI:
		return "uefi"
	}
	return "firmware(" + strconv.Itoa(int(f)) + ")"
}

// Host paths of firmware and tools; tests may override them.
var (
	QEMU     = "qemu-system-x86_64"
	ROMDir   = "/usr/lib/ipxe/qemu"
	OVMFCode = "/usr/share/OVMF/OVMF_CODE.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS.fd"
)

// Config describes one VM.
type Config struct {
	Firmware Firmware
	Kernel   string // bzImage on the host
	Initrd   string // initramfs on the host (optional)
	Cmdline  string // kernel command line

	MemoryMB int // default 512
	CPUs     int // default 1

	// ACPITables are files holding complete ACPI tables (header included),
	// passed with -acpitable file=...; the usual way to inject an iBFT.
	ACPITables []string

	// NIC is the guest's network card on QEMU user networking. Nil means no
	// NIC in Direct mode and the default NIC in BIOS/UEFI mode.
	NIC *NIC
	// HostFwd are user-networking forward rules, e.g. "tcp:127.0.0.1:13310-:80".
	HostFwd []string

	// IPXE is what the generated iPXE script does (BIOS/UEFI only).
	IPXE IPXE

	// ExtraArgs are appended to QEMU's command line (drives, devices, ...).
	ExtraArgs []string

	// ConsoleInput lets the test type on the serial console (VM.Type); without
	// it the console has no input.
	ConsoleInput bool
}

// NIC is a network card model and MAC address.
type NIC struct {
	Model string // QEMU device: "e1000" (default), "virtio-net-pci", "e1000e", "rtl8139", ...
	MAC   string // default 52:54:00:12:34:56
}

// Default NIC settings.
const (
	DefaultNICModel = "e1000"
	DefaultMAC      = "52:54:00:12:34:56"
)

// romFile is the iPXE ROM QEMU's own NIC models use, for the firmware mode.
func (n NIC) romFile(fw Firmware) string {
	name := n.Model
	if name == "virtio-net-pci" {
		name = "virtio"
	}
	prefix := "pxe-"
	if fw == UEFI {
		prefix = "efi-"
	}
	return filepath.Join(ROMDir, prefix+name+".rom")
}

// withKernelParam adds p to cmdline where the kernel reads it: before a "--",
// after which every word is init's.
func withKernelParam(cmdline, p string) string {
	words := strings.Fields(cmdline)
	i := slices.Index(words, "--")
	if i < 0 {
		i = len(words)
	}
	return strings.Join(slices.Insert(words, i, p), " ")
}

// VM is a running (or finished) QEMU guest.
type VM struct {
	t       testing.TB
	cfg     Config
	dir     string
	args    []string
	cmd     *exec.Cmd
	con     *console
	stderr  lockedBuffer
	started time.Time
	done    chan struct{}
	input   io.WriteCloser // the console's input (Config.ConsoleInput)
}

// Start boots a VM and arranges for it to be killed when the test ends. Setup
// errors fail the test.
func Start(t testing.TB, cfg Config) *VM {
	t.Helper()
	v, err := start(t, cfg)
	if err != nil {
		t.Fatalf("vm: %v", err)
	}
	return v
}

func start(t testing.TB, cfg Config) (*VM, error) {
	if cfg.Kernel == "" {
		return nil, fmt.Errorf("%s: no kernel", cfg.Firmware)
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = 512
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	// Under TCG on a loaded host the kernel's IO-APIC timer check can time out and
	// panic ("IO-APIC + timer doesn't work"); the check proves nothing in a VM.
	if !strings.Contains(cfg.Cmdline, "no_timer_check") {
		cfg.Cmdline = withKernelParam(cfg.Cmdline, "no_timer_check")
	}
	// TCG hands the guest the host's raw TSC, and on a host that is itself a VM
	// that TSC can leap (hours, once, across a pause): a guest keeping time by it
	// then sees every timeout expire at once. Tests keep time by the HPET, which
	// QEMU drives from the host's monotonic clock. Benchmarks keep the TSC: its
	// vDSO reads are what a real machine has, and a leap only spoils one run.
	if _, bench := t.(*testing.B); !bench && !strings.Contains(cfg.Cmdline, "clocksource=") {
		cfg.Cmdline = withKernelParam(cfg.Cmdline, "clocksource=hpet")
	}
	if cfg.NIC == nil && cfg.Firmware != Direct {
		cfg.NIC = &NIC{}
	}
	if cfg.NIC != nil {
		nic := *cfg.NIC
		if nic.Model == "" {
			nic.Model = DefaultNICModel
		}
		if nic.MAC == "" {
			nic.MAC = DefaultMAC
		}
		cfg.NIC = &nic
	}
	v := &VM{t: t, cfg: cfg, dir: t.TempDir(), done: make(chan struct{})}
	args, err := v.buildArgs()
	if err != nil {
		return nil, err
	}
	v.args = args
	if v.con, err = newConsole(filepath.Join(v.dir, "console.log")); err != nil {
		return nil, err
	}

	v.cmd = exec.Command(QEMU, args...)
	v.cmd.Dir = v.dir
	v.cmd.Stdout = v.con
	v.cmd.Stderr = &v.stderr
	if cfg.ConsoleInput {
		if v.input, err = v.cmd.StdinPipe(); err != nil {
			return nil, err
		}
	}
	// Own process group, so the kill reaches anything QEMU spawns; and die
	// with the test binary even if it is killed before t.Cleanup runs (childproc
	// starts it so that this happens then and only then).
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	t.Logf("vm %s: %s %s", cfg.Firmware, QEMU, strings.Join(args, " "))
	v.started = time.Now()
	child, err := childproc.Start(v.cmd)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", QEMU, err)
	}
	go func() {
		<-child.Done()
		err := child.Err()
		if s := strings.TrimSpace(v.stderr.String()); s != "" {
			err = fmt.Errorf("%v: %s", err, lastLine(s))
		}
		v.con.setExited(err)
		close(v.done)
	}()
	t.Cleanup(func() {
		v.Kill()
		if t.Failed() {
			t.Logf("vm %s: console (%s), last lines:\n%s", cfg.Firmware, v.ConsolePath(), v.con.tail(60))
			if s := v.stderr.String(); s != "" {
				t.Logf("vm %s: qemu stderr:\n%s", cfg.Firmware, s)
			}
		}
	})
	return v, nil
}

// buildArgs assembles QEMU's command line and prepares the VM directory.
func (v *VM) buildArgs() ([]string, error) {
	cfg := v.cfg
	args := []string{
		// graphics=off makes SeaBIOS (and so iPXE's BIOS console) use the serial port.
		"-accel", "tcg", "-machine", "pc,graphics=off",
		"-m", strconv.Itoa(cfg.MemoryMB), "-smp", strconv.Itoa(cfg.CPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
		"-chardev", "file,id=report,path=" + filepath.Join(v.dir, "report.log"), "-serial", "chardev:report",
	}
	for _, f := range cfg.ACPITables {
		args = append(args, "-acpitable", "file="+qemuOptEscape(f))
	}
	netdev := "user,id=n0"
	switch cfg.Firmware {
	case Direct:
		args = append(args, "-kernel", cfg.Kernel, "-append", cfg.Cmdline)
		if cfg.Initrd != "" {
			args = append(args, "-initrd", cfg.Initrd)
		}
	case BIOS, UEFI:
		tftp := filepath.Join(v.dir, "tftp")
		if err := v.writeTFTP(tftp); err != nil {
			return nil, err
		}
		netdev += ",tftp=" + qemuOptEscape(tftp) + ",bootfile=" + scriptName
		if cfg.Firmware == UEFI {
			vars := filepath.Join(v.dir, "OVMF_VARS.fd")
			if err := copyFile(OVMFVars, vars); err != nil {
				return nil, err
			}
			args = append(args,
				"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+qemuOptEscape(OVMFCode),
				"-drive", "if=pflash,format=raw,unit=1,file="+qemuOptEscape(vars))
		}
	default:
		return nil, fmt.Errorf("unknown firmware %d", cfg.Firmware)
	}
	if cfg.NIC != nil {
		for _, fwd := range cfg.HostFwd {
			netdev += ",hostfwd=" + fwd
		}
		dev := cfg.NIC.Model + ",netdev=n0,mac=" + cfg.NIC.MAC
		if cfg.Firmware == Direct {
			dev += ",romfile="
		} else {
			rom := cfg.NIC.romFile(cfg.Firmware)
			if _, err := os.Stat(rom); err != nil {
				return nil, fmt.Errorf("NIC %s: iPXE ROM: %w", cfg.NIC.Model, err)
			}
			dev += ",romfile=" + qemuOptEscape(rom) + ",bootindex=1"
			if cfg.NIC.Model == "virtio-net-pci" {
				// Debian's virtio ROMs carry the modern device id 1af4:1041, and
				// SeaBIOS only runs a ROM whose id matches the device.
				dev += ",disable-legacy=on"
			}
		}
		args = append(args, "-netdev", netdev, "-device", dev)
	} else if len(cfg.HostFwd) > 0 {
		return nil, fmt.Errorf("HostFwd needs a NIC")
	}
	return append(args, cfg.ExtraArgs...), nil
}

// writeTFTP fills the TFTP root with the kernel, initrd and iPXE script.
func (v *VM) writeTFTP(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := copyFile(v.cfg.Kernel, filepath.Join(dir, kernelName)); err != nil {
		return err
	}
	if v.cfg.Initrd != "" {
		if err := copyFile(v.cfg.Initrd, filepath.Join(dir, initrdName)); err != nil {
			return err
		}
	}
	script, err := v.cfg.IPXE.script(v.cfg)
	if err != nil {
		return err
	}
	// The script may hold CHAP secrets: owner-only, never logged.
	return os.WriteFile(filepath.Join(dir, scriptName), []byte(script), 0o600)
}

// Dir is the VM's private directory (console.log, report.log, tftp/, ...).
func (v *VM) Dir() string { return v.dir }

// Args is QEMU's command line (without the binary).
func (v *VM) Args() []string { return v.args }

// ConsolePath is the file holding the serial console.
func (v *VM) ConsolePath() string { return filepath.Join(v.dir, "console.log") }

// Console returns everything the guest printed on its console so far.
func (v *VM) Console() string { return v.con.String() }

// Report returns what the guest wrote to its second serial port (ttyS1), with
// the tty's CR LF line ends turned into LF.
func (v *VM) Report() ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(v.dir, "report.log"))
	return bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")), err
}

// WaitForReport waits until what the guest wrote to ttyS1 matches the regular
// expression pattern and returns the first match and its submatches. The report
// channel carries no kernel or systemd messages, so a line there arrives whole;
// on the console a printk can land in the middle of it.
func (v *VM) WaitForReport(ctx context.Context, timeout time.Duration, pattern string) ([]string, error) {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return nil, fmt.Errorf("vm: pattern %q: %w", pattern, err)
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		b, _ := v.Report()
		if m := re.FindSubmatch(b); m != nil {
			out := make([]string, len(m))
			for i := range m {
				out[i] = string(m[i])
			}
			return out, nil
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			return nil, fmt.Errorf("vm: %q not in the ttyS1 report after %v", pattern, timeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Pid is QEMU's process ID (its threads are the guest's CPU and devices).
func (v *VM) Pid() int { return v.cmd.Process.Pid }

// Elapsed is the time since QEMU started.
func (v *VM) Elapsed() time.Duration { return time.Since(v.started) }

// WaitFor waits until the console, after the previous match, matches the
// regular expression pattern, and returns the match and its submatches. It
// fails when QEMU exits, ctx ends or timeout passes first.
func (v *VM) WaitFor(ctx context.Context, timeout time.Duration, pattern string) ([]string, error) {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return nil, fmt.Errorf("vm: pattern %q: %w", pattern, err)
	}
	return v.con.waitFor(ctx, timeout, re)
}

// Wait waits for QEMU to exit (the guest powered off or rebooted) and returns
// its exit error, or fails after timeout.
func (v *VM) Wait(ctx context.Context, timeout time.Duration) error {
	select {
	case <-v.done:
		v.con.mu.Lock()
		defer v.con.mu.Unlock()
		return v.con.exitErr
	case <-time.After(timeout):
		return fmt.Errorf("vm: QEMU still running after %v", timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Type writes s to the serial console, as if typed (Config.ConsoleInput).
func (v *VM) Type(s string) error {
	if v.input == nil {
		return fmt.Errorf("vm: no console input (Config.ConsoleInput)")
	}
	_, err := io.WriteString(v.input, s)
	return err
}

// Signal sends sig to QEMU's process group: SIGSTOP and SIGCONT freeze and
// thaw the whole machine (a target VM that stops answering mid-I/O).
func (v *VM) Signal(sig syscall.Signal) error {
	select {
	case <-v.done:
		return fmt.Errorf("vm: QEMU already exited")
	default:
	}
	return syscall.Kill(-v.cmd.Process.Pid, sig)
}

// Kill stops QEMU (and its process group) and waits for it to be reaped.
func (v *VM) Kill() {
	select {
	case <-v.done:
		return
	default:
	}
	syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
	<-v.done
}

// qemuOptEscape doubles commas, QEMU's escape inside option values.
func qemuOptEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func lastLine(s string) string {
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
