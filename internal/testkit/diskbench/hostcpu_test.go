package diskbench_test

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// hostCPU is the CPU time, in clock ticks, that the host's threads of some
// processes have used, by "process/thread name": where the host's share of a
// guest's I/O goes (QEMU's vCPU thread, its main loop with the user network,
// the target).
type hostCPU map[string]float64

// sampleHostCPU reads utime+stime of every thread of the named processes.
func sampleHostCPU(procs map[string]int) hostCPU {
	c := hostCPU{}
	for name, pid := range procs {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		for _, t := range tasks {
			b, err := os.ReadFile(t)
			if err != nil {
				continue
			}
			s := string(b)
			open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
			if open < 0 || close < open {
				continue
			}
			f := strings.Fields(s[close+1:]) // f[0] is field 3 (state)
			if len(f) < 13 {
				continue
			}
			ut, _ := strconv.ParseFloat(f[11], 64)
			st, _ := strconv.ParseFloat(f[12], 64)
			c[name+"/"+s[open+1:close]] += ut + st
		}
	}
	return c
}

// perUnit formats what each thread used between a and c, in ms per unit (USER_HZ 100).
func (c hostCPU) perUnit(a hostCPU, units float64) string {
	var keys []string
	for k := range c {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []string
	for _, k := range keys {
		if d := c[k] - a[k]; d > 0 {
			out = append(out, fmt.Sprintf("%s=%.1fms", k, d*10/units))
		}
	}
	return strings.Join(out, " ")
}
