package testtarget

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/testenv"
)

// iscsiLs logs in with libiscsi's iscsi-inq and returns its listing: an independent
// initiator proves the launched target really serves the LUN.
func iscsiLs(t *testing.T, tg Target, user, secret string) (string, error) {
	t.Helper()
	testenv.RequireTools(t, "iSCSI target test", "iscsi-inq")
	auth := ""
	if user != "" {
		auth = user + "%" + secret + "@"
	}
	url := fmt.Sprintf("iscsi://%s%s/%s/%d", auth, tg.Addr(), tg.TargetIQN(), tg.LUNNumber())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "iscsi-inq", "-i", "iqn.2026-01.org.isboot.test:ls", url).CombinedOutput()
	return string(out), err
}

func TestTgtdServesLUN(t *testing.T) {
	d := StartTgtd(t, TgtdOptions{Port: FreePort(t, 13295, 13299), ControlPort: 19, Size: 32 << 20,
		CHAP: CHAP{"alice", "alicesecret12"}})
	out, err := iscsiLs(t, d, "alice", "alicesecret12")
	if err != nil || !strings.Contains(out, "Peripheral Device Type") {
		t.Fatalf("iscsi-inq: %v\n%s\n%s", err, out, d.Log())
	}
	if out, err := iscsiLs(t, d, "alice", "wrongsecret12"); err == nil {
		t.Fatalf("login with a wrong secret succeeded:\n%s", out)
	}
	d.Restart()
	if out, err := iscsiLs(t, d, "alice", "alicesecret12"); err != nil {
		t.Fatalf("after restart: %v\n%s", err, out)
	}
}

func TestIstgtServesLUN(t *testing.T) {
	s := StartIstgt(t, IstgtOptions{Port: FreePort(t, 13290, 13294), Size: 32 << 20})
	out, err := iscsiLs(t, s, "", "")
	if err != nil || !strings.Contains(out, "Peripheral Device Type") {
		t.Fatalf("iscsi-inq: %v\n%s\n%s", err, out, s.Log())
	}
}

func TestGotgtServesLUN(t *testing.T) {
	g := StartGotgt(t, GotgtOptions{Port: FreePort(t, 13285, 13289), Size: 32 << 20})
	out, err := iscsiLs(t, g, "", "")
	if err != nil || !strings.Contains(out, "Peripheral Device Type") {
		t.Fatalf("iscsi-inq: %v\n%s", err, out)
	}
}

// Parallel tests asking for a port before either binds it get different ones, and a
// port comes back once its test ends.
func TestFreePortHandsOutOnce(t *testing.T) {
	var first int
	t.Run("holder", func(t *testing.T) {
		first = FreePort(t, 13590, 13591)
		if second := FreePort(t, 13590, 13591); second == first {
			t.Fatalf("port %d handed out twice", first)
		}
	})
	if again := FreePort(t, 13590, 13591); again != first {
		t.Errorf("got %d after the holder ended, want %d back", again, first)
	}
}
