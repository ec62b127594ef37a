package daemon

import (
	"errors"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// emptyAfterExec deletes the files of the root the supervisor started in, PID 1's
// initramfs, once PID 1 has exec'd the real init (exec, watchExec). Deleting is
// PID 1's job in switch_root, but it is a tenth of a second of emulated CPU that
// nothing waits for, so it runs afterwards, on a thread at SCHED_IDLE: the real init
// goes first. It is called before the supervisor enters its own root, and only for a
// ramfs or tmpfs root and an exec watch: anything else is left alone.
func emptyAfterExec(exec *execWatch, debugf func(level int, format string, a ...any)) error {
	if exec == nil {
		return errors.New("no exec watch from PID 1: the initramfs stays")
	}
	var fs unix.Statfs_t
	if err := unix.Statfs("/", &fs); err != nil {
		return err
	}
	if fs.Type != unix.RAMFS_MAGIC && fs.Type != unix.TMPFS_MAGIC {
		return errors.New("/ is not an initramfs: left alone")
	}
	root, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	go func() {
		// Never unlocked: the idle thread ends with this goroutine.
		runtime.LockOSThread()
		defer unix.Close(root)
		<-exec.done
		if exec.err != nil {
			debugf(1, "supervisor: exec watch: %v; the initramfs stays", exec.err)
			return
		}
		_ = unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_IDLE}, 0)
		t0 := time.Now()
		n := deleteTree(root)
		debugf(1, "supervisor: emptied the initramfs: %d entries in %v", n, time.Since(t0).Round(time.Millisecond))
	}()
	return nil
}

// execWatch ends when the process that started the supervisor has exec'd (PID 1,
// the real init) or exited (isboot in a distribution's initramfs): the pipe on
// execWatchFD, whose write end it held close-on-exec, then reads EOF.
type execWatch struct {
	done chan struct{}
	err  error // set before done closes: the watch failed, nothing was seen
}

// watchExec starts reading the exec watch, or returns nil if there is none (a
// supervisor started some other way).
func watchExec() *execWatch {
	var st unix.Stat_t
	if err := unix.Fstat(execWatchFD, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		return nil
	}
	w := &execWatch{done: make(chan struct{})}
	go func() {
		defer close(w.done)
		var b [64]byte
		for {
			n, err := unix.Read(execWatchFD, b[:])
			if err == unix.EINTR || n > 0 {
				continue
			}
			w.err = err
			break // EOF: PID 1 has exec'd
		}
		unix.Close(execWatchFD)
	}()
	return w
}

// deleteTree empties the directory dir, staying on its filesystem: the real root,
// now mounted over it, and anything else mounted below (the daemon's own root) is
// left alone. It returns how many entries it removed.
func deleteTree(dir int) int {
	var st unix.Stat_t
	if unix.Fstat(dir, &st) != nil {
		return 0
	}
	// Read through a duplicate: an *os.File closes its descriptor, and dir is the caller's.
	dup, err := unix.Dup(dir)
	if err != nil {
		return 0
	}
	f := os.NewFile(uintptr(dup), "old root")
	names, _ := f.Readdirnames(-1)
	f.Close()
	n := 0
	for _, name := range names {
		sub, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil { // a file or a symlink
			if unix.Unlinkat(dir, name, 0) == nil {
				n++
			}
			continue
		}
		var sst unix.Stat_t
		if unix.Fstat(sub, &sst) == nil && sst.Dev == st.Dev {
			n += deleteTree(sub)
			if unix.Unlinkat(dir, name, unix.AT_REMOVEDIR) == nil {
				n++
			}
		}
		unix.Close(sub)
	}
	return n
}
