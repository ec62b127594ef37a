package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestVerifyShortFile: a writer stopped before it filled the file leaves it
// short; the verifier checks what was acknowledged and nothing past the end.
func TestVerifyShortFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "data")
	var buf bytes.Buffer
	out = &buf
	defer func() { out = os.Stdout }()
	geo := []string{"-file", file, "-slots", "1000", "-block", "4096"}
	if err := runWrite(append(geo, "-batch", "4", "-for", "50ms")); err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`done run=(0x[0-9a-f]+) acked=(\d+) `).FindStringSubmatch(buf.String())
	if m == nil || m[2] == "0" {
		t.Fatalf("writer output:\n%s", buf.String())
	}
	if n, _ := strconv.Atoi(m[2]); n >= 1000 {
		t.Skipf("the writer filled the file in 50ms (acked %s)", m[2])
	}
	if err := runVerify(append(geo, "-run", m[1], "-acked", m[2])); err != nil {
		t.Fatalf("verify of a short file: %v", err)
	}
	if err := runVerify(append(geo, "-run", m[1], "-acked", "999")); err == nil || !strings.Contains(err.Error(), "no block magic") {
		t.Fatalf("verify claiming blocks past the end: %v", err)
	}
}

// TestWriteThenVerify runs the writer on a real file for a moment, verifies
// what it acknowledged, then shows the verifier catches a lost write.
func TestWriteThenVerify(t *testing.T) {
	file := filepath.Join(t.TempDir(), "data")
	var buf bytes.Buffer
	out = &buf
	defer func() { out = os.Stdout }()
	geo := []string{"-file", file, "-slots", "64", "-block", "4096"}
	if err := runWrite(append(geo, "-batch", "4", "-for", "700ms")); err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`done run=(0x[0-9a-f]+) acked=(\d+) writes=\d+`).FindStringSubmatch(buf.String())
	if m == nil {
		t.Fatalf("no done line in:\n%s", buf.String())
	}
	var acked int
	fmt.Sscan(m[2], &acked)
	if acked < 64 {
		t.Fatalf("writer acknowledged only %d blocks in 700ms (want the file wrapped at least once)", acked)
	}
	buf.Reset()
	if err := runVerify(append(geo, "-run", m[1], "-acked", m[2])); err != nil {
		t.Fatalf("verify of an intact file: %v", err)
	}
	if !strings.Contains(buf.String(), "verify ok checked=64") {
		t.Fatalf("verify output: %s", buf.String())
	}
	// Another run id: every block is foreign.
	if err := runVerify(append(geo, "-run", "0x3", "-acked", m[2])); err == nil || !strings.Contains(err.Error(), "bad=64") {
		t.Fatalf("verify with the wrong run: %v", err)
	}
	// Claim one more acknowledged block than was written: the slot it maps to
	// holds an older block, which the verifier must call stale.
	if err := runVerify(append(geo, "-run", m[1], "-acked", fmt.Sprint(acked+1))); err == nil || !strings.Contains(err.Error(), "stale") {
		t.Fatalf("verify past the acknowledged count: %v", err)
	}
	// A lost write: zero one block behind the verifier's back.
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(make([]byte, 4096), 5*4096)
	f.Close()
	if err := runVerify(append(geo, "-run", m[1], "-acked", m[2])); err == nil || !strings.Contains(err.Error(), "bad=1 ") || !strings.Contains(err.Error(), "slot 5") {
		t.Fatalf("verify after a lost block: %v", err)
	}
}
