package daemon

import (
	"runtime"
	"testing"
)

func TestLimitProcs(t *testing.T) {
	t.Setenv("GOMAXPROCS", "")
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, tt := range []struct{ sessions, want int }{
		{0, 1}, {1, 1}, {2, min(2, runtime.NumCPU())}, {1000, runtime.NumCPU()},
	} {
		if got := LimitProcs(tt.sessions); got != tt.want || runtime.GOMAXPROCS(0) != tt.want {
			t.Errorf("LimitProcs(%d) = %d (GOMAXPROCS %d), want %d", tt.sessions, got, runtime.GOMAXPROCS(0), tt.want)
		}
	}
	t.Setenv("GOMAXPROCS", "3")
	runtime.GOMAXPROCS(3)
	if got := LimitProcs(1); got != 3 {
		t.Errorf("with GOMAXPROCS=3 in the environment: %d, want it left at 3", got)
	}
}
