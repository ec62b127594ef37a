package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Name is the daemon's process name (comm): what ps, top and pgrep show. Its argv[0]
// stays Argv0, which is what systemd looks at.
const Name = "isboot"

// ProcessName returns the calling process's name (comm).
func ProcessName() string {
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(b), "\n")
}

// execNamed replaces the process with a fresh image of its own executable whose
// process name is Name, for the main thread and so for every thread it starts.
//
// The kernel names a process after the last element of the path given to execve, not
// after the file that path resolves to: exec'ing /proc/self/exe names it "exe", and
// PID 1's /init names its child "init". So the path must end in "isboot". It is the
// executable's own path when that ends in "isboot" and still is the running file;
// otherwise a symlink named isboot, in a directory private to this pid, pointing to
// /proc/self/exe (resolved for the exec'ing process: the running file, even when it
// was replaced or deleted on disk). The new image removes that directory
// (removeExecLink). It returns only on failure.
func execNamed(argv, env []string) error {
	path, err := namedPath()
	if err != nil {
		return fmt.Errorf("exec as %q: %w", Name, err)
	}
	err = unix.Exec(path, argv, env)
	removeExecLink()
	return fmt.Errorf("exec %s: %w", path, err)
}

// namedPath returns a path ending in Name that execs the running executable.
func namedPath() (string, error) {
	if own, err := os.Readlink("/proc/self/exe"); err == nil && filepath.Base(own) == Name && sameFile(own, "/proc/self/exe") {
		return own, nil
	}
	var errs []error
	for _, dir := range execLinkDirs() {
		if err := privateDir(dir); err != nil {
			errs = append(errs, err)
			continue
		}
		link := filepath.Join(dir, Name)
		os.Remove(link) // left by an earlier process with this pid
		if err := os.Symlink("/proc/self/exe", link); err != nil {
			errs = append(errs, err)
			continue
		}
		return link, nil
	}
	return "", errors.Join(errs...)
}

// execLinkDirs are the candidate private directories, named after the pid (which
// exec keeps, so the new image finds them): under /run first (root's, and mounted by
// PID 1 before it starts the daemon), else under the temporary directory.
func execLinkDirs() []string {
	name := fmt.Sprintf(".isboot-exec.%d", os.Getpid())
	dirs := []string{filepath.Join("/run", name)}
	if tmp := os.TempDir(); tmp != "/run" {
		dirs = append(dirs, filepath.Join(tmp, name))
	}
	return dirs
}

// privateDir creates dir with mode 0700, or accepts one that is already a directory
// of ours with that mode (never one someone else prepared in a shared /tmp).
func privateDir(dir string) error {
	err := os.Mkdir(dir, 0o700)
	if err == nil || !errors.Is(err, os.ErrExist) {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || fi.Mode().Perm() != 0o700 || !ok || int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s exists and is not a private directory of ours", dir)
	}
	return nil
}

// removeExecLink removes what namedPath created for this pid, and reports whether
// there was a link: then this image was exec'd through it.
func removeExecLink() bool {
	found := false
	for _, dir := range execLinkDirs() {
		if os.Remove(filepath.Join(dir, Name)) == nil {
			found = true
		}
		os.Remove(dir)
	}
	return found
}

func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}
