package daemon

import (
	"context"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/nbd"
	"github.com/isboot/isboot/internal/testkit/testlog"
)

// runFake runs the daemon on a fake session and attachment until it serves.
func runFake(t *testing.T, sess Session, att *fakeAttachment, inUse func() bool) (dir string, sigs chan os.Signal, logs *testlog.Lines, done chan error) {
	t.Helper()
	dir = t.TempDir()
	sigs = make(chan os.Signal, 1)
	logs = &testlog.Lines{}
	done = make(chan error, 1)
	att.live.Store(1)
	ready := make(chan struct{})
	go func() {
		done <- Run(context.Background(), testConfig(dir), Options{
			Dial:           func(context.Context, *Config, func(string, ...any)) (Session, error) { return sess, nil },
			Attach:         func(*nbd.Server, nbd.AttachConfig) (Attachment, error) { return att, nil },
			Logf:           logs.Printf,
			Report:         func(e Event) { close(ready) },
			StatusInterval: 20 * time.Millisecond,
			Signals:        sigs,
			InUse:          func(string) bool { return inUse() },
		})
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("the daemon did not serve")
	}
	return dir, sigs, logs, done
}

// The shutdown's final word with the root still mounted (read-only): flush and
// logout, the device stays attached and the daemon serves on; the state says
// logged-out. Once the device is unused, the same signal stops it for good.
func TestRunFinalLogsOutAndStaysAttached(t *testing.T) {
	sess := &fakeSession{lun: blockdev.NewMem(1<<20, 512, false)}
	sess.loggedIn.Store(true)
	att := &fakeAttachment{}
	var inUse atomic.Bool
	inUse.Store(true)
	dir, sigs, logs, done := runFake(t, sess, att, inUse.Load)
	sigs <- FinalSignal
	if !logs.WaitFor("shutdown: flushed and logged out", 10*time.Second) {
		t.Fatalf("no logout; log:\n%s", logs.String())
	}
	if sess.idled.Load() != 1 || att.closed.Load() {
		t.Errorf("idled %d times, attachment closed %v; want once, attached", sess.idled.Load(), att.closed.Load())
	}
	time.Sleep(100 * time.Millisecond) // a few status refreshes
	if s := readStatus(t, dir)["net.isboot.state"]; s != "logged-out" {
		t.Errorf("state %q, want logged-out", s)
	}
	inUse.Store(false)
	sigs <- FinalSignal
	select {
	case err := <-done:
		if err != nil || !att.closed.Load() {
			t.Errorf("Run = %v, attachment closed %v", err, att.closed.Load())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the final signal did not stop a daemon whose device is unused")
	}
}

// growingLUN is a memory LUN whose capacity the target "changes".
type growingLUN struct {
	*blockdev.Mem
	size int64
}

func (g *growingLUN) Size() int64             { return g.size }
func (g *growingLUN) Refresh() (int64, error) { g.size *= 2; return g.size, nil }

type capacitySession struct {
	*fakeSession
	changed chan struct{}
}

func (c capacitySession) CapacityChanged() <-chan struct{} { return c.changed }

// A capacity change the session reports reaches the kernel device (Resize) and the
// status file.
func TestRunResizesOnCapacityChange(t *testing.T) {
	lun := &growingLUN{Mem: blockdev.NewMem(1<<20, 512, false), size: 1 << 20}
	sess := capacitySession{&fakeSession{lun: lun}, make(chan struct{}, 1)}
	att := &fakeAttachment{}
	dir, sigs, logs, done := runFake(t, sess, att, func() bool { return false })
	sess.changed <- struct{}{}
	if !logs.WaitFor("capacity change: /dev/nbd7 is now 2 MiB (was 1 MiB)", 10*time.Second) {
		t.Fatalf("no resize; log:\n%s", logs.String())
	}
	if att.resized.Load() != 2<<20 {
		t.Errorf("Resize(%d), want %d", att.resized.Load(), 2<<20)
	}
	if s := readStatus(t, dir)["net.isboot.size"]; s != "2097152" {
		t.Errorf("status size %q", s)
	}
	sigs <- syscall.SIGTERM
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "keeps its size") {
		t.Error(logs.String())
	}
}
