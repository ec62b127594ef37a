package daemon

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestLimitLog(t *testing.T) {
	var got []string
	now := time.Unix(0, 0)
	logf := limitLog(func(f string, a ...any) { got = append(got, fmt.Sprintf(f, a...)) }, "initiator", 3, time.Minute, func() time.Time { return now })
	for i := range 10 {
		logf("attempt %d", i)
		now = now.Add(time.Second)
	}
	if len(got) != 3 || got[2] != "attempt 2" {
		t.Fatalf("within the window: %q", got)
	}
	now = now.Add(time.Minute)
	logf("attempt %d", 10)
	if len(got) != 5 || !strings.Contains(got[3], "7 initiator messages suppressed") || got[4] != "attempt 10" {
		t.Errorf("after the window: %q", got)
	}
}

func TestStableISID(t *testing.T) {
	a := stableISID("iqn.a:host", "iqn.t:disk")
	if a != stableISID("iqn.a:host", "iqn.t:disk") {
		t.Error("ISID not stable")
	}
	if a == stableISID("iqn.a:other", "iqn.t:disk") || a == stableISID("iqn.a:host", "iqn.t:other") {
		t.Error("ISID does not depend on both names")
	}
	if a[0] != 0x80 || a[4] != 0 || a[5] != 0 {
		t.Errorf("ISID %x: want the random format (T=10b) with qualifier 0", a)
	}
}
