// Package rootimg makes small bootable root disks for VM tests and the demo: a GPT
// image whose Linux partition holds an ext4 filesystem with a static busybox and an
// init script. It needs no privileges: sgdisk partitions a plain file and
// mke2fs -d fills the filesystem from a directory.
package rootimg

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// Options describe the disk.
type Options struct {
	Size      int64             // bytes; default 64 MiB
	Init      string            // the real root's /sbin/init, a busybox sh script
	Label     string            // filesystem label; default "isboot-root"
	UUID      string            // filesystem UUID; default random
	PartUUID  string            // GPT partition GUID; default random
	PartLabel string            // GPT partition name; default "root"
	ESP       bool              // put a small FAT partition first, as real disks have
	Files     map[string]string // extra files: path in the root -> host file
	Busybox   string            // default /bin/busybox (Debian's busybox-static)
}

// Applets linked to busybox in /bin.
var applets = []string{"sh", "cat", "echo", "mount", "umount", "sync", "poweroff", "reboot", "ls",
	"sleep", "date", "grep", "dmesg", "uname", "head", "tail", "ps", "wc", "touch", "rm", "cut", "sed", "tr"}

const sector = 512

// Make writes the disk image to path.
func Make(path string, o Options) error {
	if o.Size == 0 {
		o.Size = 64 << 20
	}
	if o.Label == "" {
		o.Label = "isboot-root"
	}
	if o.PartLabel == "" {
		o.PartLabel = "root"
	}
	if o.Busybox == "" {
		o.Busybox = "/bin/busybox"
	}
	tree, err := os.MkdirTemp("", "rootimg-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tree)
	if err := populate(tree, o); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	f.Close()
	if err := os.Truncate(path, o.Size); err != nil {
		return err
	}
	// Partition 1: an 8 MiB ESP (optional); then root to the end.
	start := int64(2048)
	args := []string{"-o"}
	rootNum := 1
	if o.ESP {
		args = append(args, "-n1:2048:+8M", "-t1:ef00", "-c1:esp")
		start = 2048 + 8<<20/sector
		rootNum = 2
	}
	n := strconv.Itoa(rootNum)
	args = append(args, "-n"+n+":"+strconv.FormatInt(start, 10)+":0", "-t"+n+":8300", "-c"+n+":"+o.PartLabel)
	if o.PartUUID != "" {
		args = append(args, "-u"+n+":"+o.PartUUID)
	}
	if err := run("sgdisk", append(args, path)...); err != nil {
		return err
	}
	// The backup GPT takes the last 33 sectors; sgdisk ends the partition before it.
	end := o.Size/sector - 34
	blocks := (end - start + 1) * sector / 1024
	mk := []string{"-q", "-F", "-t", "ext4", "-L", o.Label, "-d", tree,
		"-E", "offset=" + strconv.FormatInt(start*sector, 10)}
	if o.UUID != "" {
		mk = append(mk, "-U", o.UUID)
	}
	return run("mke2fs", append(mk, path, strconv.FormatInt(blocks, 10)+"k")...)
}

func populate(tree string, o Options) error {
	for _, d := range []string{"bin", "sbin", "proc", "sys", "dev", "run", "tmp", "etc", "var", "usr/bin"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile(o.Busybox, filepath.Join(tree, "bin/busybox"), 0o755); err != nil {
		return fmt.Errorf("rootimg: busybox: %w (apt-get install busybox-static)", err)
	}
	for _, a := range applets {
		if err := os.Symlink("busybox", filepath.Join(tree, "bin", a)); err != nil {
			return err
		}
	}
	init := o.Init
	if init == "" {
		init = "#!/bin/sh\necho real root reached\nexec /bin/sh\n"
	}
	if err := os.WriteFile(filepath.Join(tree, "sbin/init"), []byte(init), 0o755); err != nil {
		return err
	}
	for dst, src := range o.Files {
		p := filepath.Join(tree, strings.TrimPrefix(dst, "/"))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := copyFile(src, p, 0o755); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string, perm os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, perm)
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("rootimg: %s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
