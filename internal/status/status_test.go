package status

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func sample() *Status {
	return &Status{
		Version: "v1", PID: 42, Device: "nbd0", NIC: "eth0", Debug: 2, State: Serving,
		Target: "iqn.2024-01.org.example:disk", Portal: "10.0.2.2:3260", LUN: 1, Size: 1 << 30,
		Disk: Disk{Vendor: "IET", Product: "VIRTUAL-DISK", Revision: "0001", Serial: "beaf11",
			ID: "naa.60000000000000000e00000000010001", BlockSize: 512},
		LastError: "login: timeout\nsecond line",
		Session: Session{ISID: "400001370000", TSIH: 7, Params: []KV{
			{"HeaderDigest", "None"}, {"MaxRecvDataSegmentLength", "262144"},
		}},
		Counters: Counters{Reconnects: 1, Commands: 2, ReadBytes: 3, WriteBytes: 4, ZeroWrites: 6, MergedReads: 7, Errors: 5},
		IBFT: []KV{
			{"hw.ibft.initiator_name", "iqn.2024-01.org.example:host"},
			{"hw.ibft.target0_chap_secret", "hunter2"},
			{"hw.ibft.target0_rev_chap_secret", "hunter3"},
			{"hw.ibft.target0_address", "10.0.2.2"},
		},
	}
}

func TestMarshalKeys(t *testing.T) {
	got := string(sample().Marshal())
	for _, want := range []string{
		"net.isboot.version: v1\n", "net.isboot.device: nbd0\n", "net.isboot.nic: eth0\n",
		"net.isboot.debug: 2\n", "net.isboot.state: serving\n",
		"net.isboot.target: iqn.2024-01.org.example:disk\n",
		"net.isboot.lun: 1\n", "net.isboot.lun.vendor: IET\n", "net.isboot.lun.product: VIRTUAL-DISK\n",
		"net.isboot.lun.revision: 0001\n", "net.isboot.lun.serial: beaf11\n",
		"net.isboot.lun.id: naa.60000000000000000e00000000010001\n", "net.isboot.lun.block_size: 512\n",
		"net.isboot.session.isid: 400001370000\n", "net.isboot.session.tsih: 7\n",
		"net.isboot.session.HeaderDigest: None\n", "net.isboot.session.MaxRecvDataSegmentLength: 262144\n",
		"net.isboot.reconnects: 1\n", "net.isboot.commands: 2\n", "net.isboot.read_bytes: 3\n",
		"net.isboot.write_bytes: 4\n", "net.isboot.zero_writes: 6\n", "net.isboot.merged_reads: 7\n",
		"net.isboot.errors: 5\n",
		"net.isboot.last_error: login: timeout second line\n",
		"hw.ibft.initiator_name: iqn.2024-01.org.example:host\n", "hw.ibft.target0_address: 10.0.2.2\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	s := sample()
	s.LUNName = "0105000000000000" // bus 1, LUN 5: no number
	if m := string(s.Marshal()); !strings.Contains(m, "net.isboot.lun: 0105000000000000\n") {
		t.Errorf("LUNName not used:\n%s", m)
	}
	if strings.Contains(got, "hunter") || strings.Contains(got, "secret") {
		t.Errorf("a secret reached the status file:\n%s", got)
	}
	if strings.Contains(got, "guard") {
		t.Errorf("guard keys without a guard:\n%s", got)
	}
	s.Guard = Guard{Link: "eth0", Restores: 3, Last: "eth0: put back link up, address"}
	m := string(s.Marshal())
	for _, want := range []string{"net.isboot.guard.link: eth0\n", "net.isboot.guard.restores: 3\n",
		"net.isboot.guard.last: eth0: put back link up, address\n"} {
		if !strings.Contains(m, want) {
			t.Errorf("missing %q in\n%s", want, m)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	s := sample()
	kv, err := Parse(bytes.NewReader(s.Marshal()))
	if err != nil {
		t.Fatal(err)
	}
	lines := s.Lines()
	if len(kv) != len(lines) {
		t.Fatalf("parsed %d lines, wrote %d", len(kv), len(lines))
	}
	for i := range kv {
		want := lines[i]
		want.Value = strings.ReplaceAll(want.Value, "\n", " ")
		if kv[i] != want {
			t.Errorf("line %d: got %+v, want %+v", i, kv[i], want)
		}
	}
	var m map[string]string
	if err := json.Unmarshal(JSON(kv), &m); err != nil {
		t.Fatalf("JSON: %v\n%s", err, JSON(kv))
	}
	if m["net.isboot.state"] != "serving" || m["net.isboot.session.tsih"] != "7" || len(m) != len(kv) {
		t.Errorf("JSON object wrong: %v", m)
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{"no colon here\n", ": empty key\n", "a key: with space\n"} {
		_, err := Parse(strings.NewReader("net.isboot.state: serving\n" + in))
		if err == nil || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("Parse(%q) = %v, want an error naming line 2", in, err)
		}
	}
	kv, err := Parse(strings.NewReader("# comment\n\nk: \n"))
	if err != nil || len(kv) != 1 || kv[0] != (KV{"k", ""}) {
		t.Errorf("got %v, %v", kv, err)
	}
}

// The writer keeps working when its directory was moved (switch_root moves /run), and
// readers racing with it only ever see whole files.
func TestWriterAtomicAndFollowsMovedDir(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "run", "isboot")
	w, err := NewWriter(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	s := sample()
	if err := w.Write(s); err != nil {
		t.Fatal(err)
	}
	moved := filepath.Join(base, "newroot-run")
	if err := os.Rename(filepath.Join(base, "run"), moved); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(moved, "isboot", "status")
	want := len(s.Lines())
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			s.Counters.Commands = uint64(i)
			if err := w.Write(s); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for range 200 {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		kv, err := Parse(f)
		f.Close()
		if err != nil || len(kv) != want {
			t.Fatalf("reader saw a partial file: %d lines, %v", len(kv), err)
		}
	}
	close(stop)
	wg.Wait()
	if _, err := os.Stat(filepath.Join(base, "run")); !os.IsNotExist(err) {
		t.Errorf("writer recreated the old path: %v", err)
	}
}

// The supervisor's pid and the restart count follow net.isboot.pid when there is a
// supervisor (the boot daemon), and are absent under `isboot serve`.
func TestSupervisorKeys(t *testing.T) {
	s := &Status{PID: 412, Supervisor: 83, Restarts: 2}
	m := s.Marshal()
	if !bytes.Contains(m, []byte("net.isboot.pid: 412\nnet.isboot.supervisor_pid: 83\nnet.isboot.restarts: 2\n")) {
		t.Errorf("file:\n%s", m)
	}
	if m := (&Status{PID: 412}).Marshal(); bytes.Contains(m, []byte("supervisor")) || bytes.Contains(m, []byte("restarts")) {
		t.Errorf("without a supervisor:\n%s", m)
	}
}

func TestPathKeys(t *testing.T) {
	s := &Status{Paths: []Path{
		{Portal: "10.0.2.2:3260", State: "active", Reads: 1, Writes: 2},
		{Portal: "10.0.3.2:3260", State: "failed", Errors: 3, Failovers: 1, LastError: "lost: EOF"},
	}}
	want := "net.isboot.paths: 2\n" +
		"net.isboot.path.0.portal: 10.0.2.2:3260\nnet.isboot.path.0.state: active\nnet.isboot.path.0.reads: 1\n" +
		"net.isboot.path.0.writes: 2\nnet.isboot.path.0.errors: 0\nnet.isboot.path.0.failovers: 0\nnet.isboot.path.0.last_error: \n" +
		"net.isboot.path.1.portal: 10.0.3.2:3260\nnet.isboot.path.1.state: failed\nnet.isboot.path.1.reads: 0\n" +
		"net.isboot.path.1.writes: 0\nnet.isboot.path.1.errors: 3\nnet.isboot.path.1.failovers: 1\nnet.isboot.path.1.last_error: lost: EOF\n"
	if m := s.Marshal(); !bytes.Contains(m, []byte(want)) {
		t.Errorf("file:\n%s", m)
	}
	if m := (&Status{}).Marshal(); bytes.Contains(m, []byte("path")) {
		t.Errorf("one session shows paths:\n%s", m)
	}
}

// The firmware's DHCP lease, before the daemon confirms it, has no times to show.
func TestUnconfirmedLeaseHasNoTimes(t *testing.T) {
	s := &Status{DHCP: &DHCP{Address: "10.0.2.15/24", Server: "10.0.2.2", State: "unconfirmed", Obtained: time.Now(), Expires: time.Now()}}
	got := map[string]string{}
	for _, kv := range s.Lines() {
		got[kv.Key] = kv.Value
	}
	for _, k := range []string{"lease_time", "lease_obtained", "lease_expires"} {
		if v, ok := got["net.isboot.dhcp."+k]; !ok || v != "" {
			t.Errorf("net.isboot.dhcp.%s = %q (present %v), want present and empty", k, v, ok)
		}
	}
	if got["net.isboot.dhcp.state"] != "unconfirmed" || got["net.isboot.dhcp.address"] != "10.0.2.15/24" {
		t.Errorf("lines %v", got)
	}
}
