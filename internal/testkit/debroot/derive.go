package debroot

import (
	"context"
	"path/filepath"
)

// Tree is the root directory the image was made from, test configuration included.
// It is the cache's own copy: callers that build on it (internal/testkit/distro)
// copy it first.
func (img Image) Tree() string { return filepath.Join(img.Dir, "tree") }

// MakeDisk writes a disk image like Build's from any root tree: the same GPT, the
// same partition and filesystem identities (so root=UUID=FSUUID and the tree's fstab
// hold) and an e2fsck'd ext4 made straight from the tree. logf hears progress.
func MakeDisk(ctx context.Context, tree, path string, logf func(string, ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return makeDisk(ctx, Options{Logf: logf}, tree, path)
}

// Lock takes an exclusive lock on the file at path, waiting for another holder (a
// test binary of another package building the same cache entry).
func Lock(path string) (unlock func(), err error) { return lock(path) }
