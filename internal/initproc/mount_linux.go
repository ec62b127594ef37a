package initproc

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount is one mount the boot makes; a value so the sequence can be printed and tested.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
}

// mountFlags are the options mount(8) turns into mount(2) flags rather than passing
// to the filesystem, which would reject them ("noatime" is not an ext4 option).
var mountFlags = []struct {
	name  string
	flag  uintptr
	clear bool // the option clears the flag ("rw" clears MS_RDONLY)
}{
	{"ro", unix.MS_RDONLY, false}, {"rw", unix.MS_RDONLY, true},
	{"nosuid", unix.MS_NOSUID, false}, {"suid", unix.MS_NOSUID, true},
	{"nodev", unix.MS_NODEV, false}, {"dev", unix.MS_NODEV, true},
	{"noexec", unix.MS_NOEXEC, false}, {"exec", unix.MS_NOEXEC, true},
	{"sync", unix.MS_SYNCHRONOUS, false}, {"async", unix.MS_SYNCHRONOUS, true},
	{"dirsync", unix.MS_DIRSYNC, false},
	{"noatime", unix.MS_NOATIME, false}, {"atime", unix.MS_NOATIME, true},
	{"nodiratime", unix.MS_NODIRATIME, false}, {"diratime", unix.MS_NODIRATIME, true},
	{"relatime", unix.MS_RELATIME, false}, {"norelatime", unix.MS_RELATIME, true},
	{"strictatime", unix.MS_STRICTATIME, false},
	{"lazytime", unix.MS_LAZYTIME, false}, {"nolazytime", unix.MS_LAZYTIME, true},
}

// splitOptions turns a comma-separated option list into flags (applied to base) and
// the filesystem's own options.
func splitOptions(opts string, base uintptr) (uintptr, string) {
	flags := base
	var data []string
outer:
	for _, o := range strings.Split(opts, ",") {
		if o == "" {
			continue
		}
		for _, f := range mountFlags {
			if o == f.name {
				if f.clear {
					flags &^= f.flag
				} else {
					flags |= f.flag
				}
				continue outer
			}
		}
		data = append(data, o)
	}
	return flags, strings.Join(data, ",")
}

func (m Mount) String() string {
	s := fmt.Sprintf("mount -t %s %s %s", m.FSType, m.Source, m.Target)
	var opts []string
	for _, f := range mountFlags {
		if !f.clear && m.Flags&f.flag != 0 {
			opts = append(opts, f.name)
		}
	}
	if m.Data != "" {
		opts = append(opts, m.Data)
	}
	if len(opts) > 0 {
		s += " -o " + strings.Join(opts, ",")
	}
	return s
}

// Do makes the mount point and mounts. A mount already in place (EBUSY: the kernel
// mounted devtmpfs itself) is fine.
func (m Mount) Do() error {
	if err := os.MkdirAll(m.Target, 0o755); err != nil {
		return fmt.Errorf("%s: %w", m, err)
	}
	err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data)
	if err != nil && !(errors.Is(err, unix.EBUSY) && m.Target != newRoot) {
		return fmt.Errorf("%s: %w", m, err)
	}
	return nil
}

// earlyMounts are the filesystems the boot needs before anything else. /run is what
// switch_root carries into the real root, with the status file in it.
var earlyMounts = []Mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
}

// newRoot is where the real root is mounted before switch_root.
const newRoot = "/newroot"

// rootMount is the mount of the real root the command line asks for: ro unless rw,
// and rootflags= split into mount flags and the filesystem's options.
func rootMount(dev, fstype, rootflags string, rw bool) Mount {
	var base uintptr
	if !rw {
		base = unix.MS_RDONLY
	}
	flags, data := splitOptions(rootflags, base)
	return Mount{Source: dev, Target: newRoot, FSType: fstype, Flags: flags, Data: data}
}
