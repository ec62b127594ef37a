package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/iscsi"
)

// Against tgtd with CHAP: a login gives the session identity and negotiated keys for
// the status file; an unknown target, a wrong secret or a refused digest is a
// permanent failure (the boot stops at once), a closed port a transient one (the
// daemon retries).
//
// Ports are this package's slice of the shared ranges (see internal/testkit/testtarget):
// TCP 13530-13539 and control port 60; 13390-13399 and 31 were internal/initproc's.
func TestDialISCSI(t *testing.T) {
	chap := testtarget.CHAP{User: "isboot-daemon", Secret: "daemon-secret-12"}
	g := testtarget.StartTgtd(t, testtarget.TgtdOptions{
		Port: testtarget.FreePort(t, 13530, 13534), ControlPort: 60, Size: 16 << 20, CHAP: chap})
	cfg := &Config{Config: iscsi.Config{Portals: []string{g.Addr()}, TargetName: g.IQN, LUN: g.LUN,
		InitiatorName: "iqn.2026-01.org.isboot.test:daemon", CHAPUser: chap.User, CHAPSecret: chap.Secret}}
	sess, err := DialISCSI(context.Background(), cfg, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Logout(context.Background())
	info := sess.Info()
	if len(info.ISID) != 12 || info.TSIH == 0 || info.Portal != g.Addr() {
		t.Errorf("info %+v", info)
	}
	keys := map[string]string{}
	for _, kv := range info.Params {
		keys[kv.Key] = kv.Value
	}
	for _, k := range []string{"MaxRecvDataSegmentLength", "HeaderDigest", "MaxBurstLength"} {
		if keys[k] == "" {
			t.Errorf("negotiated key %s missing from %v", k, keys)
		}
	}
	if sess.LUN().Size() != 16<<20 {
		t.Errorf("LUN size %d", sess.LUN().Size())
	}

	bad := *cfg
	bad.TargetName = "iqn.2026-01.org.isboot.test:no-such-target"
	_, err = DialISCSI(context.Background(), &bad, t.Logf)
	if !errors.Is(err, ErrPermanent) || !strings.Contains(err.Error(), "not found") {
		t.Errorf("unknown target: %v, want a permanent 'not found'", err)
	}

	wrong := *cfg
	wrong.CHAPSecret = "wrong-secret-123"
	_, err = DialISCSI(context.Background(), &wrong, t.Logf)
	if !errors.Is(err, ErrPermanent) || !strings.Contains(err.Error(), "authentication") {
		t.Errorf("wrong secret: %v, want a permanent authentication failure", err)
	}

	// tgtd's default offers no digest: a required one ends the boot at once (the
	// daemon's attempt would otherwise last attemptTimeout and repeat forever).
	digest := *cfg
	digest.HeaderDigest = iscsi.DigestCRC32C
	start := time.Now()
	_, err = DialISCSI(context.Background(), &digest, t.Logf)
	t.Logf("required digest: failed in %v: %v", time.Since(start).Round(time.Millisecond), err)
	if !errors.Is(err, ErrPermanent) || err.Error() != "iscsi: target refused HeaderDigest=CRC32C (answered None)" {
		t.Errorf("required digest: %v, want a permanent refusal naming HeaderDigest", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("required digest: failed after %v", el)
	}

	closed := *cfg
	closed.Portals = []string{fmt.Sprintf("127.0.0.1:%d", testtarget.FreePort(t, 13535, 13539))}
	ctx, cancel := context.WithTimeout(context.Background(), 1500e6)
	defer cancel()
	_, err = DialISCSI(ctx, &closed, t.Logf)
	if err == nil || errors.Is(err, ErrPermanent) {
		t.Errorf("closed port: %v, want a transient error", err)
	}
}
