package nbd

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/testkit/testenv"
)

func nbdURI(sock string) string { return "nbd+unix:///?socket=" + sock }

func run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return out
}

func TestNbdinfoReportsExport(t *testing.T) {
	testenv.Require(t, "integration test", "nbdinfo")
	for _, ro := range []bool{false, true} {
		sock, _ := serveUnix(t, blockdev.NewMem(48<<20, 4096, ro), Options{ExportName: "lun1", MaxRequest: 16 << 20})
		out := run(t, "nbdinfo", "--json", nbdURI(sock))
		var info struct {
			Protocol string `json:"protocol"`
			Exports  []map[string]any
		}
		if err := json.Unmarshal(out, &info); err != nil {
			t.Fatalf("nbdinfo --json: %v\n%s", err, out)
		}
		if info.Protocol != "newstyle-fixed" || len(info.Exports) != 1 {
			t.Fatalf("nbdinfo: %s", out)
		}
		e := info.Exports[0]
		want := map[string]any{
			"export-size": 48.0 * (1 << 20), "block_size_minimum": 4096.0,
			"block_size_preferred": 4096.0, "block_size_maximum": 16.0 * (1 << 20),
			"is_read_only": ro, "can_flush": true, "can_fua": true, "can_trim": true,
			"can_zero": true, "can_multi_conn": true, "can_df": true, "can_cache": false,
		}
		for k, v := range want {
			if e[k] != v {
				t.Errorf("read-only=%v: nbdinfo %s = %v, want %v", ro, k, e[k], v)
			}
		}
		list := run(t, "nbdinfo", "--list", "--json", nbdURI(sock))
		if !bytes.Contains(list, []byte(`"export-name": "lun1"`)) {
			t.Errorf("nbdinfo --list does not show export lun1:\n%s", list)
		}
	}
}

func TestNbdcopyRoundTrip(t *testing.T) {
	testenv.Require(t, "integration test", "nbdcopy")
	const size = 64 << 20
	dev := blockdev.NewMem(size, 512, false)
	sock, _ := serveUnix(t, dev, Options{})
	dir := t.TempDir()
	src, back := filepath.Join(dir, "src"), filepath.Join(dir, "back")
	data := randBytes(size, 42)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "nbdcopy", "--connections=4", "--requests=16", src, nbdURI(sock))
	got := make([]byte, size)
	dev.ReadAt(got, 0)
	if !bytes.Equal(got, data) {
		t.Fatal("device contents differ from the file nbdcopy wrote")
	}
	run(t, "nbdcopy", "--connections=4", nbdURI(sock), back)
	if b, _ := os.ReadFile(back); !bytes.Equal(b, data) {
		t.Fatal("nbdcopy read back different data")
	}
}

func TestFioRandRWVerify(t *testing.T) {
	testenv.Require(t, "integration test", "fio")
	const jobs, per = 4, 16 << 20
	dev := blockdev.NewMem(jobs*per, 512, false)
	sock, srv := serveUnix(t, dev, Options{})
	// One libnbd connection per job, each verifying its own region.
	out := run(t, "fio", "--name=nbdverify", "--ioengine=nbd", "--uri="+nbdURI(sock),
		"--rw=randrw", "--bs=4k", "--iodepth=16", "--numjobs=4", "--size=16M",
		"--offset_increment=16M", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
		"--group_reporting", "--output-format=json", "--verify_state_save=0")
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"read"`
			Write struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if i := bytes.IndexByte(out, '{'); i >= 0 {
		out = out[i:]
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) == 0 {
		t.Fatalf("fio output: %v\n%s", err, out)
	}
	j := res.Jobs[0]
	if j.Error != 0 || j.Write.IOBytes == 0 || j.Read.IOBytes == 0 {
		t.Errorf("fio: error %d, read %d, written %d bytes", j.Error, j.Read.IOBytes, j.Write.IOBytes)
	}
	if st := srv.Stats(); st.Errors != 0 || st.WriteBytes != uint64(j.Write.IOBytes) {
		t.Errorf("server stats %+v, fio wrote %d bytes", st, j.Write.IOBytes)
	}
}
