// Package testenv decides whether an integration or VM test can run on this machine.
// One rule for every package: skip under -short; when root or a peer program is
// missing, skip — or fail under CI (`make test` sets CI=1), so that CI cannot go green
// by skipping the tests it exists to run.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether tests run under CI, where a missing prerequisite is a failure.
func InCI() bool { return os.Getenv("CI") != "" }

// Require skips (or fails in CI) unless the test may run as root with every tool on
// PATH. what names the kind of test in the message, e.g. "VM test".
func Require(t testing.TB, what string, tools ...string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("%s: skipped under -short", what)
	}
	if os.Geteuid() != 0 {
		missing(t, what, "needs root (run make test as root)")
	}
	RequireTools(t, what, tools...)
}

// RequireTools skips (or fails in CI) unless every tool is on PATH; it asks nothing
// else, for tests that need a program but not root.
func RequireTools(t testing.TB, what string, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		LookPath(t, what, tool)
	}
}

// LookPath returns the path of tool, or skips (fails in CI) when it is not installed.
func LookPath(t testing.TB, what, tool string) string {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		missing(t, what, tool+" not installed (make deps)")
	}
	return path
}

func missing(t testing.TB, what, why string) {
	t.Helper()
	if InCI() {
		t.Fatalf("%s: %s (CI=1 makes this a failure)", what, why)
	}
	t.Skipf("%s: %s", what, why)
}
