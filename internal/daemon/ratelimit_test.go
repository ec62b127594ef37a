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
	logf := limitLog(func(f string, a ...any) { got = append(got, fmt.Sprintf(f, a...)) }, 3, time.Minute, func() time.Time { return now })
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
