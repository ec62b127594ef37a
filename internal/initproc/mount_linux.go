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

func (m Mount) String() string {
	s := fmt.Sprintf("mount -t %s %s %s", m.FSType, m.Source, m.Target)
	var opts []string
	if m.Flags&unix.MS_RDONLY != 0 {
		opts = append(opts, "ro")
	}
	if m.Flags&unix.MS_NOSUID != 0 {
		opts = append(opts, "nosuid")
	}
	if m.Flags&unix.MS_NODEV != 0 {
		opts = append(opts, "nodev")
	}
	if m.Flags&unix.MS_NOEXEC != 0 {
		opts = append(opts, "noexec")
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

// rootMount is the mount of the real root the command line asks for.
func rootMount(dev, fstype, flags string, rw bool) Mount {
	m := Mount{Source: dev, Target: newRoot, FSType: fstype, Data: flags}
	if !rw {
		m.Flags |= unix.MS_RDONLY
	}
	return m
}
