package testtarget

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/childproc"
	"github.com/isboot/isboot/internal/testkit/testenv"
)

// TgtdOptions configures one tgtd instance with one target and one LUN (1 unless LUN says).
type TgtdOptions struct {
	Port int // TCP port (from the caller's range)
	// Host is the address tgtd listens on; default 127.0.0.1. IPv6 works ("::1"), and
	// a link-local address needs its zone ("fe80::1%eth0").
	Host string
	// Netns is a named network namespace (ip netns) to run tgtd in; "": this one.
	// The harness's own connection checks then dial from inside it.
	Netns       string
	ControlPort int    // tgtd -C N (from the caller's range)
	IQN         string // default iqn.2026-01.org.isboot.test:tgtd<port>
	Backing     string // backing file; default a 64 MiB sparse file in t.TempDir()
	Size        int64  // size of the default backing file
	CHAP        CHAP   // incoming account: the initiator authenticates with it
	MutualCHAP  CHAP   // outgoing account: the target authenticates with it
	// Params are target parameters set with `tgtadm --op update --mode target`,
	// e.g. {"HeaderDigest", "CRC32C"}, {"MaxBurstLength", "8192"}.
	Params [][2]string
	// ReadOnly exports the LUN write-protected.
	ReadOnly bool
	// LUN is the LUN number (tgtd takes up to 2^64-1, and decodes peripheral and
	// flat space addressing: 0-16383 reach it); 0 means 1 (tgtd's LUN 0 is its
	// controller).
	LUN uint64
	// LUNParams are extra `tgtadm --mode logicalunit --op update --params` values,
	// e.g. "scsi_sn=abc" to give the LUN another identity.
	LUNParams string
	// KeepBuffers runs tgtd with glibc's malloc told to keep freed memory: a
	// 32 MiB mmap threshold and a 256 MiB trim threshold. tgtd allocates a data buffer
	// for every command; with glibc's defaults those buffers are mapped, faulted in
	// and trimmed again command after command (page faults, and TLB shootdowns across
	// its threads), which caps a sequential read at about 270 MB/s on this machine
	// whoever the initiator is (1.2-1.7 GB/s with it). Benchmarks that compare two
	// initiators or servers set it, so they measure those and not tgtd's allocator.
	KeepBuffers bool
}

// keepBuffersTunables is KeepBuffers' glibc setting (see tunables(3)).
const keepBuffersTunables = "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456"

// Tgtd is a running tgtd (Linux SCSI target framework) serving one LUN.
type Tgtd struct {
	t    testing.TB
	opts TgtdOptions
	IQN  string
	LUN  uint64
	log  string

	mu  sync.Mutex
	cmd *exec.Cmd
	// exited is closed when the current process has been reaped.
	exited <-chan struct{}
}

// StartTgtd starts tgtd in the foreground and configures it; it is killed in t.Cleanup.
func StartTgtd(t testing.TB, opts TgtdOptions) *Tgtd {
	t.Helper()
	testenv.Require(t, "iSCSI target", "tgtd", "tgtadm")
	if opts.Port == 0 || opts.ControlPort == 0 {
		t.Fatalf("testtarget: TgtdOptions needs Port and ControlPort")
	}
	if opts.IQN == "" {
		opts.IQN = fmt.Sprintf("iqn.2026-01.org.isboot.test:tgtd%d", opts.Port)
	}
	if opts.Backing == "" {
		size := opts.Size
		if size == 0 {
			size = 64 << 20
		}
		opts.Backing = CreateBacking(t, t.TempDir(), size)
	}
	if opts.LUN == 0 {
		opts.LUN = 1
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	d := &Tgtd{t: t, opts: opts, IQN: opts.IQN, LUN: opts.LUN, log: filepath.Join(t.TempDir(), "tgtd.log")}
	t.Cleanup(d.kill)
	if err := d.start(); err != nil {
		t.Fatalf("testtarget: tgtd: %v", err)
	}
	return d
}

func (d *Tgtd) Addr() string         { return net.JoinHostPort(d.opts.Host, strconv.Itoa(d.opts.Port)) }
func (d *Tgtd) TargetIQN() string    { return d.IQN }
func (d *Tgtd) LUNNumber() uint64    { return d.LUN }
func (d *Tgtd) Backing() string      { return d.opts.Backing }
func (d *Tgtd) Options() TgtdOptions { return d.opts }

// Pid is the running tgtd's process id (0 when it is not running), for benchmarks
// that count the target's CPU time.
func (d *Tgtd) Pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// CPU is the user and system time the running tgtd has used, all its threads
// together (/proc/PID/stat, in 10 ms clock ticks), or 0 when it is not running.
// Benchmarks whose ratios tgtd bounds print what each initiator costs the target.
func (d *Tgtd) CPU() time.Duration {
	pid := d.Pid()
	if pid == 0 {
		return 0
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(stat), ')') // the name may hold spaces and ')'
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(stat[i+1:])) // f[0] is field 3, the state
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64) // field 14, utime
	st, _ := strconv.ParseInt(f[12], 10, 64) // field 15, stime
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func (d *Tgtd) start() error {
	logf, err := os.OpenFile(d.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{"tgtd", "-f", "-C", strconv.Itoa(d.opts.ControlPort), "--iscsi", "portal=" + d.Addr()}
	if d.opts.Netns != "" {
		// tgtd's management socket is a file, so tgtadm reaches it from here.
		args = append([]string{"ip", "netns", "exec", d.opts.Netns}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if d.opts.KeepBuffers {
		cmd.Env = append(os.Environ(), keepBuffersTunables)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	child, err := childproc.Start(cmd)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.cmd, d.exited = cmd, child.Done()
	d.mu.Unlock()
	// Another tgtd on the same control port makes this one exit at once, and tgtadm
	// would then configure the wrong daemon: check ours is still alive first.
	select {
	case <-child.Done():
		return fmt.Errorf("tgtd exited at start (control port %d in use?)\n%s", d.opts.ControlPort, logTail(d.log))
	case <-time.After(100 * time.Millisecond):
	}
	// tgtd goes on running when its portal is taken, and a connection check would
	// then reach whoever holds the port (maybe another test's tgtd, same target name).
	if b, _ := os.ReadFile(d.log); bytes.Contains(b, []byte("failed to create/bind to portal")) {
		d.kill()
		return fmt.Errorf("port %d is taken by someone else\n%s", d.opts.Port, logTail(d.log))
	}
	if err := d.configure(); err != nil {
		d.kill()
		return fmt.Errorf("%v\n%s", err, logTail(d.log))
	}
	if err := waitListeningIn(d.opts.Netns, d.Addr(), 10*time.Second); err != nil {
		d.kill()
		return fmt.Errorf("%v\n%s", err, logTail(d.log))
	}
	return nil
}

// tgtadm runs one management command against this instance.
func (d *Tgtd) tgtadm(args ...string) error {
	full := append([]string{"-C", strconv.Itoa(d.opts.ControlPort), "--lld", "iscsi"}, args...)
	out, err := exec.Command("tgtadm", full...).CombinedOutput()
	if err != nil {
		// Never echo the arguments: they may hold a CHAP secret.
		return fmt.Errorf("tgtadm %s %s: %v: %s", args[0], args[1], err, out)
	}
	return nil
}

func (d *Tgtd) configure() error {
	// The management socket appears shortly after start.
	var err error
	for i := 0; i < 100; i++ {
		if err = d.tgtadm("--op", "new", "--mode", "target", "--tid", "1", "-T", d.IQN); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	lun := strconv.FormatUint(d.opts.LUN, 10)
	lu := []string{"--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", lun, "-b", d.opts.Backing}
	if err := d.tgtadm(lu...); err != nil {
		return err
	}
	if d.opts.LUNParams != "" {
		if err := d.tgtadm("--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", lun, "--params", d.opts.LUNParams); err != nil {
			return err
		}
	}
	if d.opts.ReadOnly {
		if err := d.tgtadm("--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", lun, "--params", "readonly=1"); err != nil {
			return err
		}
	}
	if err := d.tgtadm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"); err != nil {
		return err
	}
	if d.opts.CHAP.User != "" {
		if err := d.tgtadm("--op", "new", "--mode", "account", "--user", d.opts.CHAP.User, "--password", d.opts.CHAP.Secret); err != nil {
			return err
		}
		if err := d.tgtadm("--op", "bind", "--mode", "account", "--tid", "1", "--user", d.opts.CHAP.User); err != nil {
			return err
		}
	}
	if d.opts.MutualCHAP.User != "" {
		if err := d.tgtadm("--op", "new", "--mode", "account", "--user", d.opts.MutualCHAP.User, "--password", d.opts.MutualCHAP.Secret); err != nil {
			return err
		}
		if err := d.tgtadm("--op", "bind", "--mode", "account", "--tid", "1", "--user", d.opts.MutualCHAP.User, "--outgoing"); err != nil {
			return err
		}
	}
	for _, kv := range d.opts.Params {
		if err := d.tgtadm("--op", "update", "--mode", "target", "--tid", "1", "--name", kv[0], "--value", kv[1]); err != nil {
			return err
		}
	}
	return nil
}

// kill stops the daemon with SIGKILL (its whole process group) and reaps it.
func (d *Tgtd) kill() {
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.cmd = nil
	d.mu.Unlock()
	if cmd == nil {
		return
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT)
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-exited
	if d.opts.Netns == "" {
		waitClosed(d.Addr(), 2*time.Second)
	}
}

// Stop kills tgtd; connections drop without a logout, as in a target crash.
func (d *Tgtd) Stop() { d.kill() }

// Restart starts tgtd again on the same port with the same target, LUN and backing file.
func (d *Tgtd) Restart() {
	d.t.Helper()
	d.kill()
	if err := d.start(); err != nil {
		d.t.Fatalf("testtarget: restart tgtd: %v", err)
	}
}

// SetLUNParams changes the LUN parameters used from the next Restart on.
func (d *Tgtd) SetLUNParams(p string) { d.opts.LUNParams = p }

// SetParams changes the target parameters used from the next Restart on.
func (d *Tgtd) SetParams(p [][2]string) { d.opts.Params = p }

// Pause freezes tgtd (SIGSTOP): the TCP connection stays up but nothing answers.
func (d *Tgtd) Pause() { d.signal(syscall.SIGSTOP) }

// Resume lets a paused tgtd run again.
func (d *Tgtd) Resume() { d.signal(syscall.SIGCONT) }

func (d *Tgtd) signal(sig syscall.Signal) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd != nil {
		syscall.Kill(-d.cmd.Process.Pid, sig)
	}
}

// Log returns the daemon's output so far, for failure messages.
func (d *Tgtd) Log() string { return logTail(d.log) }

// handedOutControl holds the control ports FreeControlPort has given to tests still
// running: parallel subtests would otherwise both find a port free before either
// tgtd takes it, and the second tgtd exits at start.
var handedOutControl = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// FreeControlPort returns a tgtd control port in [lo, hi] that no running tgtd
// answers on (its management socket is /var/run/tgtd/socket.N) and that no other
// test of this process holds until t ends.
func FreeControlPort(t testing.TB, lo, hi int) int {
	t.Helper()
	handedOutControl.Lock()
	defer handedOutControl.Unlock()
	for p := lo; p <= hi; p++ {
		if handedOutControl.ports[p] {
			continue
		}
		c, err := net.DialTimeout("unix", fmt.Sprintf("/var/run/tgtd/socket.%d", p), 100*time.Millisecond)
		if err == nil {
			c.Close()
			continue
		}
		handedOutControl.ports[p] = true
		t.Cleanup(func() {
			handedOutControl.Lock()
			delete(handedOutControl.ports, p)
			handedOutControl.Unlock()
		})
		return p
	}
	t.Fatalf("testtarget: every tgtd control port in %d-%d is in use", lo, hi)
	return 0
}
