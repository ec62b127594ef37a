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
// guest /init → exec went from 1.2-1.5 s to 1.07-1.15 s. Afterwards it serves at
// the default: raised, it preempts every process that submits a request, so the
// kernel never hands it a batch, and random 4 KiB reads at queue depth 32 fell from
// about 4,300 to 700-1,500 IOPS in the same guest.
const bootNice = -20

// bootBoost raises the serving processes started while the boot is on and lowers
// the raised one when it ends.
type bootBoost struct {
	logf func(string, ...any)

	mu  sync.Mutex
	on  bool // the boot is on: a serving process starts raised
	pid int  // the raised serving process, 0: none
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
		return
	}
	b.pid = pid
}

// end puts the raised serving process back to the default priority, and starts
// the later ones there.
func (b *bootBoost) end() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.on = false
	if b.pid != 0 {
		_ = unix.Setpriority(unix.PRIO_PGRP, b.pid, 0) // gone already: nothing to lower
		b.pid = 0
	}
}
