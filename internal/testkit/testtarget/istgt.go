package testtarget

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/childproc"
	"github.com/isboot/isboot/internal/testkit/testenv"
)

// IstgtOptions configures one istgt instance with one disk at LUN 0.
type IstgtOptions struct {
	Port       int    // TCP port on 127.0.0.1
	IQN        string // default iqn.2026-01.org.isboot.test:istgt<port>
	Backing    string // default a sparse file in t.TempDir()
	Size       int64  // default 64 MiB
	CHAP       CHAP   // initiator's account (AuthMethod CHAP)
	MutualCHAP CHAP   // target's account (AuthMethod CHAP Mutual)
	// Global are extra [Global] lines, e.g. {"MaxBurstLength", "65536"}.
	Global [][2]string
}

// Istgt is a running istgt serving one LUN.
type Istgt struct {
	opts IstgtOptions
	IQN  string
	LUN  uint64
	log  string
}

func (s *Istgt) Addr() string      { return fmt.Sprintf("127.0.0.1:%d", s.opts.Port) }
func (s *Istgt) TargetIQN() string { return s.IQN }
func (s *Istgt) LUNNumber() uint64 { return s.LUN }
func (s *Istgt) Backing() string   { return s.opts.Backing }
func (s *Istgt) Log() string       { return logTail(s.log) }

// StartIstgt writes a config into a temp dir and runs istgt in the foreground (-D).
func StartIstgt(t testing.TB, opts IstgtOptions) *Istgt {
	t.Helper()
	testenv.Require(t, "iSCSI target", "istgt")
	if opts.Port == 0 {
		t.Fatalf("testtarget: IstgtOptions needs Port")
	}
	if opts.IQN == "" {
		opts.IQN = fmt.Sprintf("iqn.2026-01.org.isboot.test:istgt%d", opts.Port)
	}
	dir := t.TempDir()
	if opts.Size == 0 {
		opts.Size = 64 << 20
	}
	if opts.Backing == "" {
		opts.Backing = CreateBacking(t, dir, opts.Size)
	}
	s := &Istgt{opts: opts, IQN: opts.IQN, LUN: 0, log: filepath.Join(dir, "istgt.log")}
	conf := filepath.Join(dir, "istgt.conf")
	if err := os.WriteFile(conf, []byte(s.config(dir)), 0o600); err != nil {
		t.Fatalf("testtarget: istgt config: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "auth.conf"), []byte(s.auth()), 0o600); err != nil {
		t.Fatalf("testtarget: istgt auth: %v", err)
	}
	os.MkdirAll(filepath.Join(dir, "media"), 0o755)
	logf, err := os.Create(s.log)
	if err != nil {
		t.Fatalf("testtarget: %v", err)
	}
	defer logf.Close()
	cmd := exec.Command("istgt", "-D", "-q", "-c", conf, "-p", filepath.Join(dir, "istgt.pid"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	child, err := childproc.Start(cmd)
	if err != nil {
		t.Fatalf("testtarget: start istgt: %v", err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT)
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-child.Done()
	})
	if err := waitListening(s.Addr(), 10*time.Second); err != nil {
		t.Fatalf("testtarget: istgt: %v\n%s", err, s.Log())
	}
	return s
}

func (s *Istgt) config(dir string) string {
	auth := "None"
	if s.opts.CHAP.User != "" {
		auth = "CHAP"
		if s.opts.MutualCHAP.User != "" {
			auth = "CHAP Mutual"
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[Global]\n  NodeBase \"iqn.2026-01.org.isboot.test\"\n")
	fmt.Fprintf(&b, "  PidFile %s/istgt.pid\n  AuthFile %s/auth.conf\n  MediaDirectory %s/media\n", dir, dir, dir)
	fmt.Fprintf(&b, "  LogFacility \"local7\"\n  Timeout 30\n  NopInInterval 20\n  DiscoveryAuthMethod Auto\n")
	fmt.Fprintf(&b, "  MaxSessions 16\n  MaxConnections 4\n  MaxR2T 32\n  MaxOutstandingR2T 16\n")
	fmt.Fprintf(&b, "  DefaultTime2Wait 2\n  DefaultTime2Retain 60\n")
	global := map[string]string{"FirstBurstLength": "262144", "MaxBurstLength": "1048576",
		"MaxRecvDataSegmentLength": "262144", "InitialR2T": "Yes", "ImmediateData": "Yes"}
	for _, kv := range s.opts.Global {
		global[kv[0]] = kv[1]
	}
	for _, k := range []string{"FirstBurstLength", "MaxBurstLength", "MaxRecvDataSegmentLength", "InitialR2T", "ImmediateData"} {
		fmt.Fprintf(&b, "  %s %s\n", k, global[k])
		delete(global, k)
	}
	for k, v := range global {
		fmt.Fprintf(&b, "  %s %s\n", k, v)
	}
	fmt.Fprintf(&b, "  DataPDUInOrder Yes\n  DataSequenceInOrder Yes\n  ErrorRecoveryLevel 0\n")
	// istgt refuses to start without a UnitControl section; without a Portal it opens none.
	fmt.Fprintf(&b, "[UnitControl]\n  AuthMethod None\n")
	fmt.Fprintf(&b, "[PortalGroup1]\n  Portal DA1 127.0.0.1:%d\n", s.opts.Port)
	fmt.Fprintf(&b, "[InitiatorGroup1]\n  InitiatorName \"ALL\"\n  Netmask 127.0.0.0/8\n")
	fmt.Fprintf(&b, "[LogicalUnit1]\n  TargetName %s\n  Mapping PortalGroup1 InitiatorGroup1\n", s.IQN)
	fmt.Fprintf(&b, "  AuthMethod %s\n  AuthGroup AuthGroup1\n  UseDigest Auto\n  UnitType Disk\n", auth)
	fmt.Fprintf(&b, "  QueueDepth 64\n")
	fmt.Fprintf(&b, "  LUN0 Storage %s %dMB\n", s.opts.Backing, s.opts.Size>>20)
	return b.String()
}

func (s *Istgt) auth() string {
	if s.opts.CHAP.User == "" {
		return "[AuthGroup1]\n"
	}
	line := fmt.Sprintf("  Auth %q %q", s.opts.CHAP.User, s.opts.CHAP.Secret)
	if s.opts.MutualCHAP.User != "" {
		line += fmt.Sprintf(" %q %q", s.opts.MutualCHAP.User, s.opts.MutualCHAP.Secret)
	}
	return "[AuthGroup1]\n" + line + "\n"
}
