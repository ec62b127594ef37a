package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/nbd"
	"github.com/isboot/isboot/internal/status"
	"github.com/isboot/isboot/internal/testkit/testlog"
	"github.com/isboot/isboot/iscsi"
)

type fakeSession struct {
	lun      blockdev.Device
	loggedIn atomic.Bool
	idled    atomic.Int32
	info     SessionInfo
}

func (s *fakeSession) LUN() blockdev.Device { return s.lun }
func (s *fakeSession) Info() SessionInfo {
	i := s.info
	i.Idle = s.idled.Load() > 0 && !s.loggedIn.Load()
	return i
}
func (s *fakeSession) Logout(context.Context) error {
	s.loggedIn.Store(false)
	return nil
}
func (s *fakeSession) Idle(context.Context) error {
	s.loggedIn.Store(false)
	s.idled.Add(1)
	return nil
}

type fakeAttachment struct {
	closed  atomic.Bool
	live    atomic.Int32
	resized atomic.Int64
}

func (a *fakeAttachment) Device() string       { return "nbd7" }
func (a *fakeAttachment) Reconfigures() uint64 { return 2 }
func (a *fakeAttachment) Live() int            { return int(a.live.Load()) }
func (a *fakeAttachment) Close() error         { a.closed.Store(true); return nil }
func (a *fakeAttachment) Resize(n int64) error { a.resized.Store(n); return nil }

const secret = "Secr3t-Never-Shown"

func testConfig(dir string) *Config {
	return &Config{
		Config: iscsi.Config{Portals: []string{"192.0.2.1:3260"}, TargetName: "iqn.2024-01.org.example:disk", LUN: 1,
			InitiatorName: "iqn.2024-01.org.example:host", CHAPUser: "u", CHAPSecret: secret,
			RevCHAPUser: "t", RevCHAPSecret: secret + "2"},
		Device: -1, StatusDir: dir,
		IBFT: []status.KV{{Key: "hw.ibft.chap_secret", Value: "***"}, {Key: "hw.ibft.target_port", Value: "3260"}}, Version: "test",
	}
}

func readStatus(t *testing.T, dir string) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "status"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	kv, err := status.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, e := range kv {
		m[e.Key] = e.Value
	}
	return m
}

// Login fails twice (transient), then succeeds; the daemon reports retry, retry,
// ready; the status file follows; a SIGTERM while the device is in use is ignored,
// one after it is released stops the daemon, which disconnects and logs out.
func TestRunRetryServeStop(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	sess := &fakeSession{lun: blockdev.NewMem(8<<20, 512, false), info: SessionInfo{
		ISID: "400001370000", TSIH: 9, Params: []status.KV{{Key: "MaxBurstLength", Value: "262144"}}}}
	var dials atomic.Int32
	dial := func(ctx context.Context, c *Config, logf func(string, ...any)) (Session, error) {
		if dials.Add(1) <= 2 {
			return nil, fmt.Errorf("connect %s: connection refused", c.Portals[0])
		}
		sess.loggedIn.Store(true)
		return sess, nil
	}
	att := &fakeAttachment{}
	att.live.Store(1)
	var gotCfg nbd.AttachConfig
	events := make(chan Event, 10)
	sigs := make(chan os.Signal, 1)
	var inUse atomic.Bool
	inUse.Store(true)
	var logs testlog.Lines
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), cfg, Options{
			Dial: dial,
			Attach: func(s *nbd.Server, c nbd.AttachConfig) (Attachment, error) {
				gotCfg = c
				return att, nil
			},
			Logf:           logs.Printf,
			Report:         func(e Event) { events <- e },
			StatusInterval: 20 * time.Millisecond,
			MaxBackoff:     10 * time.Millisecond,
			Signals:        sigs,
			InUse:          func(dev string) bool { return dev == "nbd7" && inUse.Load() },
		})
	}()
	for _, want := range []EventKind{EventRetry, EventRetry, EventReady} {
		select {
		case e := <-events:
			if e.Kind != want {
				t.Fatalf("event %v, want %s", e, want)
			}
			if e.Kind == EventReady && e.Text != "nbd7" {
				t.Errorf("ready on %q, want nbd7", e.Text)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s event", want)
		}
	}
	if gotCfg.Timeout != 0 || gotCfg.DeadConnTimeout < time.Hour || gotCfg.Connections != 1 || gotCfg.Index != -1 {
		t.Errorf("attach config %+v: want no request timeout, a long dead-connection timeout, 1 connection, index -1", gotCfg)
	}
	// The periodic refresh brings in the session and the attachment's counters.
	deadline := time.Now().Add(5 * time.Second)
	var m map[string]string
	for time.Now().Before(deadline) {
		m = readStatus(t, dir)
		if m["net.isboot.session.tsih"] == "9" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for k, want := range map[string]string{
		"net.isboot.state": "serving", "net.isboot.device": "nbd7", "net.isboot.target": cfg.TargetName,
		"net.isboot.session.isid": "400001370000", "net.isboot.session.MaxBurstLength": "262144",
		"net.isboot.errors": "2", "net.isboot.reconnects": "2", "net.isboot.version": "test",
		"net.isboot.size": fmt.Sprint(8 << 20), "hw.ibft.target_port": "3260",
	} {
		if m[k] != want {
			t.Errorf("%s = %q, want %q", k, m[k], want)
		}
	}
	// A dead socket shows as reconnecting (at the next refresh: poll, a fixed
	// 100 ms could end before it on a loaded machine).
	att.live.Store(0)
	if s := waitState(t, dir, "reconnecting"); s != "reconnecting" {
		t.Errorf("state with no live socket = %q, want reconnecting", s)
	}
	att.live.Store(1)

	sigs <- syscall.SIGTERM
	// Check only once the daemon has decided about this signal.
	if !logs.WaitFor("is still in use: serving on", 10*time.Second) {
		t.Fatalf("no decision on SIGTERM while the device was in use; log:\n%s", logs.String())
	}
	if att.closed.Load() || !sess.loggedIn.Load() {
		t.Fatal("stopped on SIGTERM while the device was in use")
	}
	inUse.Store(false)
	sigs <- syscall.SIGTERM
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("did not stop on SIGTERM after the device was released")
	}
	if !att.closed.Load() || sess.loggedIn.Load() {
		t.Errorf("stop: attachment closed %v, logged out %v", att.closed.Load(), !sess.loggedIn.Load())
	}
	b, _ := os.ReadFile(filepath.Join(dir, "status"))
	if all := logs.String() + string(b); strings.Contains(all, secret) {
		t.Errorf("a secret leaked into the log or status:\n%s", all)
	}
}

// A refused login is permanent: one fatal event, state failed, Run returns.
func TestRunPermanentFailure(t *testing.T) {
	dir := t.TempDir()
	var events []Event
	err := Run(context.Background(), testConfig(dir), Options{
		Dial: func(context.Context, *Config, func(string, ...any)) (Session, error) {
			return nil, fmt.Errorf("login: authentication failure (status 0x0201): %w", ErrPermanent)
		},
		Report: func(e Event) { events = append(events, e) },
	})
	if !errors.Is(err, ErrPermanent) {
		t.Fatalf("Run = %v, want a permanent error", err)
	}
	if len(events) != 1 || events[0].Kind != EventFatal || !strings.Contains(events[0].Text, "authentication failure") {
		t.Errorf("events %v", events)
	}
	m := readStatus(t, dir)
	if m["net.isboot.state"] != "failed" || !strings.Contains(m["net.isboot.last_error"], "authentication") {
		t.Errorf("status %v", m)
	}
}

func TestConfigStringHasNoSecrets(t *testing.T) {
	s := testConfig("").String()
	if strings.Contains(s, secret) || !strings.Contains(s, "mutual CHAP") {
		t.Errorf("Config.String() = %q", s)
	}
}

// waitState polls the status file until its state is want or 10 s have passed,
// and returns the last state read.
func waitState(t *testing.T, dir, want string) string {
	t.Helper()
	var s string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if s = readStatus(t, dir)["net.isboot.state"]; s == want {
			break
		}
	}
	return s
}

// SIGTERM while the target does not answer ends the daemon at once, as a stop:
// nothing is served yet, so nothing waits for it.
func TestRunStopWhileLoggingIn(t *testing.T) {
	dir := t.TempDir()
	sigs := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), testConfig(dir), Options{
			Dial: func(ctx context.Context, c *Config, _ func(string, ...any)) (Session, error) {
				<-ctx.Done() // a target that never answers
				return nil, ctx.Err()
			},
			Signals: sigs,
		})
	}()
	time.Sleep(50 * time.Millisecond)
	sigs <- syscall.SIGTERM
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil (a clean stop)", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("SIGTERM did not end a daemon still logging in")
	}
	if m := readStatus(t, dir); m["net.isboot.last_error"] != "stopped" {
		t.Errorf("status %v", m)
	}
}
