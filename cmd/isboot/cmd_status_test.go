package main

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/isboot/isboot/internal/status"
)

// runSelf runs a subcommand in this process with stdout and stderr captured. (No
// TestMain re-exec here: other cmd_*_test.go files share this package.)
func runSelf(t *testing.T, args ...string) (string, int) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	oldOut, oldErr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = w, w
	done := make(chan []byte)
	go func() { b, _ := io.ReadAll(r); done <- b }()
	code := commands[args[0]].run(args[1:])
	os.Stdout, os.Stderr = oldOut, oldErr
	w.Close()
	return string(<-done), code
}

func TestStatusCommand(t *testing.T) {
	dir := t.TempDir()
	w, err := status.NewWriter(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Write(&status.Status{Version: "t", Device: "nbd0", State: status.Serving, Target: "iqn.t:x"}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "status")
	out, code := runSelf(t, "status", "--file", file)
	if code != 0 || !strings.Contains(out, "net.isboot.state: serving\n") || !strings.Contains(out, "net.isboot.target: iqn.t:x\n") {
		t.Errorf("status: exit %d, output:\n%s", code, out)
	}
	out, code = runSelf(t, "status", "--json", "--file", file)
	var m map[string]string
	if code != 0 || json.Unmarshal([]byte(out), &m) != nil || m["net.isboot.device"] != "nbd0" {
		t.Errorf("status --json: exit %d, output:\n%s", code, out)
	}
	out, code = runSelf(t, "status", "--file", filepath.Join(dir, "missing"))
	if code != 1 || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, "missing") {
		t.Errorf("missing file: exit %d, output:\n%s", code, out)
	}
}
