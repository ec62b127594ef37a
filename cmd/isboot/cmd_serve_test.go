package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/status"
	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/isboot/isboot/internal/testkit/testlog"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/iscsi"
)

func TestServeFlags(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("s3cr3t-value\n"), 0o600)
	for _, c := range []struct {
		args []string
		bad  string // substring of the usage error, "" when valid
	}{
		{[]string{"--portal", "127.0.0.1:3260", "--target", "iqn.x:t", "--lun", "1", "--listen", "unix:/x"}, ""},
		{[]string{"--portal", "a:1,b:2", "--target", "iqn.x:t", "--lun", "1", "--attach", "/dev/nbd3", "--connections", "2"}, ""},
		{[]string{"--mem", "64M", "--attach"}, ""},
		{[]string{"--mem", "64M", "--attach", "--connections", "2"}, ""},
		{[]string{"--ibft", "f", "--chap-user", "u", "--chap-secret-file", secret, "--listen", "tcp:127.0.0.1:0"}, ""},
		{[]string{"--mem", "64M"}, "exactly one of --listen and --attach"},
		{[]string{"--mem", "64M", "--listen", "unix:/x", "--attach"}, "exactly one of --listen and --attach"},
		{[]string{"--listen", "unix:/x"}, "exactly one of --ibft"},
		{[]string{"--ibft", "f", "--mem", "1M", "--listen", "unix:/x"}, "exactly one of --ibft"},
		{[]string{"--target", "iqn.x:t", "--listen", "unix:/x"}, "--portal and --target go together"},
		{[]string{"--mem", "1M", "--attach", "/dev/sda"}, "want /dev/nbdN"},
		{[]string{"--mem", "1M", "--attach", "--connections", "0"}, "want 1..16"},
		{[]string{"--mem", "1M", "--listen", "unix:/x", "--chap-user", "u"}, "go together"},
		{[]string{"--mem", "1M", "--listen", "unix:/x", "--chap-user", "u", "--chap-secret-file", filepath.Join(dir, "nope")}, "secret file"},
		{[]string{"--mem", "1M", "--listen", "unix:/x", "--header-digest", "md5"}, "want none or crc32c"},
		{[]string{"--mem", "1M", "--listen", "unix:/x", "--data-digest", "crc32c,none"}, "--data-digest \"crc32c,none\": want none or crc32c"},
		{[]string{"--mem", "1M", "--listen", "unix:/x", "--header-digest", "CRC32C", "--data-digest", "None"}, ""},
		{[]string{"--mem", "12Q", "--listen", "unix:/x"}, "--mem"},
		{[]string{"--portal", "a:1", "--target", "iqn.x:t", "--lun", "0105000000000000", "--listen", "unix:/x"}, ""},
		{[]string{"--portal", "a:1", "--target", "iqn.x:t", "--lun", "20000", "--listen", "unix:/x"}, "--lun: LUN 20000 has no single-level SAM form"},
		{[]string{"--portal", "a:1", "--target", "iqn.x:t", "--lun", "0x12c", "--listen", "unix:/x"}, `--lun: LUN "0x12c": want a number 0-16383 or 16 hex digits`},
		{[]string{"--portal", "a:1,b:2", "--target", "iqn.x:t", "--paths", "multipath", "--listen", "unix:/x"}, ""},
		{[]string{"--portal", "a:1", "--target", "iqn.x:t", "--paths", "multipath", "--listen", "unix:/x"}, "--paths multipath needs two or more --portal"},
		{[]string{"--portal", "a:1,b:2", "--target", "iqn.x:t", "--paths", "both", "--listen", "unix:/x"}, `--paths "both": want failover or multipath`},
	} {
		var stderr bytes.Buffer
		cfg, _, code := parseServeFlags(c.args, io.Discard, &stderr)
		if c.bad == "" {
			if code != -1 || cfg == nil {
				t.Errorf("%q: rejected: %s", c.args, stderr.String())
			}
			continue
		}
		if code != 2 || !strings.Contains(stderr.String(), c.bad) {
			t.Errorf("%q: exit %d, stderr %q, want usage error with %q", c.args, code, stderr.String(), c.bad)
		}
		if strings.Contains(stderr.String(), "s3cr3t") {
			t.Errorf("%q: secret in output", c.args)
		}
	}
	cfg, _, _ := parseServeFlags([]string{"--mem", "1M", "--listen", "unix:/x", "--chap-user", "u", "--chap-secret-file", secret}, io.Discard, io.Discard)
	if cfg.iscsi.CHAPSecret != "s3cr3t-value" {
		t.Errorf("secret read as %q", cfg.iscsi.CHAPSecret)
	}
	cfg, _, _ = parseServeFlags([]string{"--mem", "1M", "--listen", "unix:/x", "--header-digest", "CRC32C", "--data-digest", "None"}, io.Discard, io.Discard)
	if cfg.iscsi.HeaderDigest != iscsi.DigestCRC32C || cfg.iscsi.DataDigest != iscsi.DigestNone {
		t.Errorf("digests %q %q, want CRC32C and None (required)", cfg.iscsi.HeaderDigest, cfg.iscsi.DataDigest)
	}
	if cfg, _, _ := parseServeFlags([]string{"--mem", "1M", "--listen", "unix:/x"}, io.Discard, io.Discard); cfg.iscsi.HeaderDigest != iscsi.DigestAuto {
		t.Errorf("no --header-digest: %q, want the target's choice", cfg.iscsi.HeaderDigest)
	}
	if cfg, _, _ := parseServeFlags([]string{"--mem", "1M", "--attach", "/dev/nbd7"}, io.Discard, io.Discard); cfg.kernel.Index != 7 {
		t.Errorf("--attach /dev/nbd7: index %d", cfg.kernel.Index)
	}
	if cfg, _, _ := parseServeFlags([]string{"--mem", "1M", "--attach"}, io.Discard, io.Discard); cfg.kernel.Index != -1 {
		t.Errorf("bare --attach: index %d, want -1 (first free)", cfg.kernel.Index)
	}
}

// startServe runs the serve command in-process until the test ends and waits for its
// unix socket. Its status file is "status" next to the socket (never the system's).
func startServe(t testing.TB, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "nbd.sock")
	cfg, _, code := parseServeFlags(append(args, "--listen", "unix:"+sock, "--status", filepath.Join(dir, "status")), io.Discard, os.Stderr)
	if code >= 0 {
		t.Fatalf("flags %q rejected", args)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, t.Logf) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		select {
		case err := <-done:
			t.Fatalf("serve ended early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("serve did not create its socket")
		}
	}
}

func TestServeFileRoundTrip(t *testing.T) {
	testenv.Require(t, "integration test", "nbdcopy", "nbdinfo")
	dir := t.TempDir()
	disk, src := filepath.Join(dir, "disk"), filepath.Join(dir, "src")
	os.WriteFile(disk, make([]byte, 8<<20), 0o600)
	data := bytes.Repeat([]byte("isboot serve --image "), 8<<20/20+1)[:8<<20]
	os.WriteFile(src, data, 0o600)
	sock := startServe(t, "--image", disk)
	uri := "nbd+unix:///?socket=" + sock
	if out, err := exec.Command("nbdcopy", src, uri).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(disk); !bytes.Equal(got, data) {
		t.Error("file contents differ from what nbdcopy wrote through serve")
	}
	// The status file counts what went through (within a second: Observe's tick).
	st := filepath.Join(filepath.Dir(sock), "status")
	var kv []status.KV
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if kv, _ = status.ReadFile(st); status.Value(kv, "net.isboot.write_bytes") == "8388608" {
			break
		}
	}
	for k, want := range map[string]string{"net.isboot.state": "serving", "net.isboot.size": "8388608",
		"net.isboot.write_bytes": "8388608", "net.isboot.pid": strconv.Itoa(os.Getpid())} {
		if got := status.Value(kv, k); got != want {
			t.Errorf("status %s = %q, want %q", k, got, want)
		}
	}
	out, err := exec.Command("nbdinfo", "--size", uri).Output()
	if err != nil || strings.TrimSpace(string(out)) != "8388608" {
		t.Errorf("nbdinfo --size: %q, %v", out, err)
	}
}

// This package's slice of the shared ranges (see internal/testkit/testtarget): tgtd TCP
// ports 13500-13529 (13400-13449 are internal/nbd's VM test's, which runs at the
// same time: tgtd keeps running when its port is taken, so a shared range let a
// test log in to the other package's target), and these control ports.
const portLo, portHi = 13500, 13529

const (
	ctlGateway     = 40
	ctlGatewayCHAP = 41
	ctlBench       = 42
	ctlIBFT        = 44 // 43: the iSCSI VM test in internal/nbd
	ctlDigest      = 45
	ctlLUN300      = 46
	ctlDisk        = 47
)

func randomFile(t testing.TB, path string, size int) []byte {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestServeGatewayTgtd writes through the gateway with nbdcopy and reads the LUN back
// on an independent path (QEMU's libiscsi), then the other way round.
func TestServeGatewayTgtd(t *testing.T) {
	testenv.Require(t, "integration test", "nbdcopy", "nbdinfo", "qemu-img", "tgtd")
	const size = 32 << 20
	d := testtarget.StartTgtd(t, testtarget.TgtdOptions{Port: testtarget.FreePort(t, portLo, portHi),
		ControlPort: ctlGateway, Size: size,
		Params: [][2]string{{"HeaderDigest", "CRC32C"}, {"DataDigest", "CRC32C"}}})
	sock := startServe(t, "--portal", d.Addr(), "--target", d.IQN, "--lun", "1",
		"--header-digest", "crc32c", "--data-digest", "crc32c")
	uri := "nbd+unix:///?socket=" + sock
	if got := strings.TrimSpace(mustRun(t, "nbdinfo", "--size", uri)); got != fmt.Sprint(size) {
		t.Fatalf("nbdinfo --size: %s, want %d", got, size)
	}
	dir := t.TempDir()
	lunURL := fmt.Sprintf("iscsi://%s/%s/1", d.Addr(), d.IQN)

	src := filepath.Join(dir, "src")
	want := randomFile(t, src, size)
	mustRun(t, "nbdcopy", "--flush", "--connections=4", src, uri)
	back := filepath.Join(dir, "back")
	mustRun(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", lunURL, back)
	if got, _ := os.ReadFile(back); !bytes.Equal(got, want) {
		t.Fatal("the LUN read with qemu-img differs from what nbdcopy wrote through the gateway")
	}

	src2 := filepath.Join(dir, "src2")
	want2 := randomFile(t, src2, size)
	mustRun(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src2, lunURL)
	back2 := filepath.Join(dir, "back2")
	mustRun(t, "nbdcopy", uri, back2)
	if got, _ := os.ReadFile(back2); !bytes.Equal(got, want2) {
		t.Fatal("the LUN read through the gateway differs from what qemu-img wrote")
	}
}

// TestServeGatewayCHAP logs in with mutual CHAP, secrets from files.
func TestServeGatewayCHAP(t *testing.T) {
	testenv.Require(t, "integration test", "nbdcopy", "tgtd")
	const size = 8 << 20
	d := testtarget.StartTgtd(t, testtarget.TgtdOptions{Port: testtarget.FreePort(t, portLo, portHi),
		ControlPort: ctlGatewayCHAP, Size: size,
		CHAP:       testtarget.CHAP{User: "isboot-user", Secret: "initiator-secret-1"},
		MutualCHAP: testtarget.CHAP{User: "tgt-user", Secret: "target-secret-22"}})
	dir := t.TempDir()
	secret, rev := filepath.Join(dir, "secret"), filepath.Join(dir, "rev")
	os.WriteFile(secret, []byte("initiator-secret-1\n"), 0o600)
	os.WriteFile(rev, []byte("target-secret-22\n"), 0o600)
	sock := startServe(t, "--portal", d.Addr(), "--target", d.IQN, "--lun", "1",
		"--chap-user", "isboot-user", "--chap-secret-file", secret,
		"--rev-chap-user", "tgt-user", "--rev-chap-secret-file", rev)
	src := filepath.Join(dir, "src")
	want := randomFile(t, src, size)
	mustRun(t, "nbdcopy", "--flush", src, "nbd+unix:///?socket="+sock)
	if got, _ := os.ReadFile(d.Backing()); !bytes.Equal(got[:size], want) {
		t.Fatal("tgtd's backing file differs from what nbdcopy wrote through the gateway")
	}
}

// TestServeFromIBFT takes portal, target, LUN, initiator and CHAP from an iBFT file.
func TestServeFromIBFT(t *testing.T) {
	testenv.Require(t, "integration test", "nbdinfo", "tgtd")
	const size = 16 << 20
	d := testtarget.StartTgtd(t, testtarget.TgtdOptions{Port: testtarget.FreePort(t, portLo, portHi),
		ControlPort: ctlIBFT, Size: size,
		CHAP: testtarget.CHAP{User: "ibft-user", Secret: "ibft-secret-123"}})
	lun, _ := ibft.SAMLUN(1)
	file := writeIBFT(t, d, ibft.Target{LUN: 1, LUNRaw: lun, CHAPType: ibft.CHAPOneWay,
		CHAPName: "ibft-user", CHAPSecret: "ibft-secret-123"})
	sock := startServe(t, "--ibft", file)
	if got := strings.TrimSpace(mustRun(t, "nbdinfo", "--size", "nbd+unix:///?socket="+sock)); got != fmt.Sprint(size) {
		t.Errorf("nbdinfo --size through an iBFT-configured gateway: %s, want %d", got, size)
	}
}

// writeIBFT writes an iBFT file whose one NIC is on loopback and whose one target
// is tg at d's portal and name.
func writeIBFT(t *testing.T, d *testtarget.Tgtd, tg ibft.Target) string {
	t.Helper()
	_, portStr, _ := strings.Cut(d.Addr(), ":")
	port, _ := strconv.Atoi(portStr)
	mac, _ := net.ParseMAC("52:54:00:12:34:56")
	tg.Flags, tg.IP, tg.Port, tg.Name = 3, netip.MustParseAddr("127.0.0.1"), uint16(port), d.IQN
	b, err := ibft.Encode(&ibft.Table{
		Revision:  1,
		OEMID:     "ISBOOT",
		Initiator: ibft.Initiator{Flags: 3, Name: "iqn.2026-01.org.isboot:ibft-initiator"},
		NICs: []ibft.NIC{{Flags: 3, IP: netip.MustParseAddr("127.0.0.1"), Prefix: 8,
			Origin: ibft.OriginManual, MAC: mac}},
		Targets: []ibft.Target{tg},
	})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "ibft.bin")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// A digest given is required: `serve --header-digest CRC32C` against a target
// configured without digests ends within seconds, exit 1, its last line naming the
// key, and the status file says so too.
func TestServeRequiredDigestRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary: skipped under -short")
	}
	testenv.Require(t, "integration test", "tgtd")
	d := testtarget.StartTgtd(t, testtarget.TgtdOptions{Port: testtarget.FreePort(t, portLo, portHi),
		ControlPort: ctlDigest, Size: 8 << 20, Params: [][2]string{{"HeaderDigest", "None"}, {"DataDigest", "None"}}})
	bin := buildIsboot(t, "isboot")
	dir := t.TempDir()
	st := filepath.Join(dir, "status")
	for _, c := range []struct{ flag, value, want string }{
		{"--header-digest", "CRC32C", "isboot serve: iscsi: target refused HeaderDigest=CRC32C (answered None)"},
		{"--data-digest", "crc32c", "isboot serve: iscsi: target refused DataDigest=CRC32C (answered None)"},
	} {
		cmd := exec.Command(bin, "serve", "--portal", d.Addr(), "--target", d.IQN, "--lun", "1", c.flag, c.value,
			"--listen", "unix:"+filepath.Join(dir, "nbd.sock"), "--status", st)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		start := time.Now()
		err := cmd.Run()
		took := time.Since(start)
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		t.Logf("%s %s: exit after %v: %v; last line: %s", c.flag, c.value, took.Round(time.Millisecond), err, lines[len(lines)-1])
		if code := cmd.ProcessState.ExitCode(); code != 1 {
			t.Errorf("exit code %d, want 1\n%s", code, stderr.String())
		}
		if lines[len(lines)-1] != c.want {
			t.Errorf("last line %q, want %q", lines[len(lines)-1], c.want)
		}
		if took > 5*time.Second {
			t.Errorf("serve took %v to give up", took)
		}
		kv, _ := status.ReadFile(st)
		if status.Value(kv, "net.isboot.state") != "failed" || !strings.HasSuffix(c.want, status.Value(kv, "net.isboot.last_error")) {
			t.Errorf("status: state %q, last_error %q", status.Value(kv, "net.isboot.state"), status.Value(kv, "net.isboot.last_error"))
		}
	}
}

// The status file shows the disk as the LUN describes itself (camcontrol inquiry's
// fields), and `isboot status --json` prints them.
func TestServeStatusShowsDisk(t *testing.T) {
	testenv.Require(t, "integration test", "tgtd")
	d := testtarget.StartTgtd(t, testtarget.TgtdOptions{Port: testtarget.FreePort(t, portLo, portHi),
		ControlPort: ctlDisk, Size: 8 << 20,
		LUNParams: "vendor_id=ISBOOT,product_id=ROOT DISK,product_rev=4.2,scsi_sn=SN-0042"})
	sock := startServe(t, "--portal", d.Addr(), "--target", d.IQN, "--lun", "1")
	var stdout, stderr bytes.Buffer
	if code := statusMain([]string{"--file", filepath.Join(filepath.Dir(sock), "status"), "--json"}, &stdout, &stderr); code != 0 {
		t.Fatalf("isboot status --json: exit %d: %s", code, stderr.String())
	}
	var m map[string]string
	if err := json.Unmarshal(stdout.Bytes(), &m); err != nil {
		t.Fatalf("isboot status --json: %v\n%s", err, stdout.String())
	}
	for k, want := range map[string]string{
		"net.isboot.lun.vendor": "ISBOOT", "net.isboot.lun.product": "ROOT DISK", "net.isboot.lun.revision": "4.2",
		"net.isboot.lun.serial": "SN-0042", "net.isboot.lun.block_size": "512",
	} {
		if m[k] != want {
			t.Errorf("%s = %q, want %q", k, m[k], want)
		}
	}
	// tgtd's NAA designator (type 6, registered extended: 16 bytes).
	if id := m["net.isboot.lun.id"]; !strings.HasPrefix(id, "naa.6") || len(id) != len("naa.")+32 {
		t.Errorf("net.isboot.lun.id = %q, want tgtd's naa.6...", id)
	}
}

// LUN 300 (flat space addressing, 41 2c in the iBFT) is served from an iBFT file and
// from --lun, by number or in its 8-byte form.
func TestServeFlatSpaceLUN(t *testing.T) {
	testenv.Require(t, "integration test", "nbdinfo", "tgtd")
	const size = 8 << 20
	d := testtarget.StartTgtd(t, testtarget.TgtdOptions{Port: testtarget.FreePort(t, portLo, portHi),
		ControlPort: ctlLUN300, Size: size, LUN: 300})
	file := writeIBFT(t, d, ibft.Target{LUN: 300, LUNRaw: [8]byte{0x41, 0x2c}})
	for _, args := range [][]string{
		{"--ibft", file},
		{"--portal", d.Addr(), "--target", d.IQN, "--lun", "300"},
		{"--portal", d.Addr(), "--target", d.IQN, "--lun", "412c000000000000"},
	} {
		sock := startServe(t, args...)
		if got := strings.TrimSpace(mustRun(t, "nbdinfo", "--size", "nbd+unix:///?socket="+sock)); got != fmt.Sprint(size) {
			t.Errorf("%q: nbdinfo --size %s, want %d", args, got, size)
		}
		kv, _ := status.ReadFile(filepath.Join(filepath.Dir(sock), "status"))
		if got := status.Value(kv, "net.isboot.lun"); got != "300" {
			t.Errorf("%q: net.isboot.lun %q, want 300", args, got)
		}
	}
}

// `serve --listen tcp:` exports the LUN to whoever reaches the port: --help says so,
// and serve logs a warning when it listens on TCP (not on a unix socket).
func TestServeTCPWarnsNoAuth(t *testing.T) {
	var help bytes.Buffer
	parseServeFlags([]string{"--help"}, &help, &help)
	if !strings.Contains(help.String(), "NO AUTHENTICATION") {
		t.Errorf("--help does not warn about tcp:\n%s", help.String())
	}
	port := fmt.Sprintf("tcp:127.0.0.1:%d", freeTCPPort(t))
	for spec, warn := range map[string]bool{port: true, "unix:" + filepath.Join(t.TempDir(), "s"): false} {
		cfg, _, code := parseServeFlags([]string{"--mem", "1M", "--listen", spec, "--status", ""}, io.Discard, os.Stderr)
		if code >= 0 {
			t.Fatalf("%s: flags rejected", spec)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var logs testlog.Lines
		done := make(chan error, 1)
		go func() { done <- serve(ctx, cfg, logs.Printf) }()
		if !logs.WaitFor("serving ", 10*time.Second) {
			t.Fatalf("%s: serve did not start: %s", spec, logs.String())
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", spec, err)
		}
		got := strings.Contains(logs.String(), "has no authentication")
		if got != warn || warn && !strings.Contains(logs.String(), "warning: NBD on "+port+" has no authentication") {
			t.Errorf("%s: warning logged %v, want %v:\n%s", spec, got, warn, logs.String())
		}
	}
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
