package initproc

import (
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/internal/klog"
	"github.com/isboot/isboot/internal/testkit/testlog"
)

func testBoot() (*boot, *testlog.Lines) {
	out := &testlog.Lines{}
	return &boot{log: klog.New("isboot", nil, out, 7, 0)}, out
}

// A panic in a background goroutine of PID 1 does not end the process (the kernel
// would panic): it reaches the rescue path as a failure naming the goroutine, and its
// stack reaches the log.
func TestGoSafeTurnsPanicIntoFailure(t *testing.T) {
	b, out := testBoot()
	failed := make(chan error, 1)
	b.onFail = func(err error) { failed <- err }
	b.goSafe("load storage modules", func() { panic("module table corrupt") })
	select {
	case err := <-failed:
		if err.Error() != "internal error in load storage modules: module table corrupt" {
			t.Errorf("failure %q", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the panic reached no failure path")
	}
	if log := out.String(); !strings.Contains(log, "panic in load storage modules: module table corrupt") ||
		!strings.Contains(log, "goroutine") {
		t.Errorf("log lacks the panic and its stack:\n%s", log)
	}
	// Without a panic nothing fails.
	ran := make(chan struct{})
	b.goSafe("quiet", func() { close(ran) })
	<-ran
	select {
	case err := <-failed:
		t.Errorf("a goroutine that returned failed: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
}

// A malformed key that only loses its own effect is a warning naming the key; the
// boot goes on with the rest. A malformed root= (or netroot=) stops it, clearly.
func TestCmdlineWarnings(t *testing.T) {
	b, out := testBoot()
	if err := b.takeCmdline(cmdline.ParseString("isboot.debug=9 isboot.timeout=soon root=LABEL=r rw")); err != nil {
		t.Fatalf("malformed isboot.debug, isboot.timeout: %v, want warnings only", err)
	}
	if b.cmd == nil || b.cmd.Root.Value != "r" || !b.cmd.ReadWrite {
		t.Errorf("the good keys were not taken: %+v", b.cmd)
	}
	for _, key := range []string{"isboot.debug", "isboot.timeout"} {
		if !strings.Contains(out.String(), "cmdline: "+key+": ") {
			t.Errorf("no warning naming %s:\n%s", key, out.String())
		}
	}
	b, _ = testBoot()
	err := b.takeCmdline(cmdline.ParseString("isboot.debug=1 root=sda1"))
	if err == nil || !strings.Contains(err.Error(), `cmdline: root: "sda1": want UUID=`) {
		t.Errorf("malformed root=: %v, want a clear failure", err)
	}
}
