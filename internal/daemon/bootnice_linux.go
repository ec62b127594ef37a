package daemon

import (
	"sync"

	"golang.org/x/sys/unix"
)

// bootNice is the serving process's nice value until PID 1 has exec'd the real init.
// Until then the boot waits on the root device, and the one CPU of a small machine
// (or an emulated one) is busy loading modules: at the default priority each step
// of the login and the attach waited behind PID 1's module loads, a second or two
// of kernel work. Raised, the serving process runs as soon as it can, and in a TCG
// guest /init → exec went from 1.2-1.5 s to 1.07-1.15 s. Once requests come, the
// serving process sets its own priority from the kernel's queue (queuePriority):
// kept at -20 after the boot, it preempted every process that submits a request,
// so the kernel never handed it a batch, and random 4 KiB reads at queue depth 32
// fell from about 4,300 to 700-1,500 IOPS in the same guest. By the exec it has
// served the root's mount, so the boost needs no ending of its own.
const bootNice = -20

// bootBoost raises the serving processes started while the boot is on.
type bootBoost struct {
	logf func(string, ...any)

	mu sync.Mutex
	on bool // the boot is on: a serving process starts raised
}

// raise gives the serving process pid (a session leader: its process group is
// its threads, now and later) bootNice, while the boot is on.
func (b *bootBoost) raise(pid int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.on {
		return
	}
	if err := unix.Setpriority(unix.PRIO_PGRP, pid, bootNice); err != nil {
		b.logf("supervisor: nice %d for the serving process during the boot: %v", bootNice, err)
	}
}

// end starts the serving processes from now on at the default priority. The one
// running keeps the level its queue set.
func (b *bootBoost) end() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.on = false
}
