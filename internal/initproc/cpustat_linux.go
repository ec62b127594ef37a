package initproc

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// cpuTimes says where the CPU went since boot (/proc/stat: user, system, idle, irq,
// softirq) and in the boot's processes (utime+stime), in ms: under emulation the
// boot is as long as its CPU work, and idle time is where overlapping can still pay.
func cpuTimes(pids ...int) string {
	var b strings.Builder
	if s, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(s), "\n")
		f := strings.Fields(line)
		names := []string{"user", "nice", "sys", "idle", "iowait", "irq", "softirq"}
		for i, n := range names {
			if i+1 < len(f) {
				fmt.Fprintf(&b, "%s %s ", n, ticksMS(f[i+1]))
			}
		}
	}
	for _, pid := range pids {
		s, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		_, rest, _ := strings.Cut(string(s), ") ")
		f := strings.Fields(rest) // f[0] is field 3 (state); utime, stime are fields 14, 15
		if len(f) > 12 {
			fmt.Fprintf(&b, "pid%d user %s sys %s ", pid, ticksMS(f[11]), ticksMS(f[12]))
		}
	}
	return strings.TrimSpace(b.String())
}

// ticksMS turns clock ticks (USER_HZ, 100 on Linux) into milliseconds.
func ticksMS(s string) string {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return "?"
	}
	return strconv.FormatInt(n*10, 10) + "ms"
}
