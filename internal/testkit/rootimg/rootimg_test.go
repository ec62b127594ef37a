package rootimg

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/internal/rootfind"
	"github.com/isboot/isboot/internal/testkit/testenv"
)

// The image is what rootfind expects: GPT, root on the Linux partition with the
// label and UUIDs asked for, and debugfs sees init and busybox in it.
func TestMake(t *testing.T) {
	testenv.RequireTools(t, "rootimg test", "sgdisk", "mke2fs", "debugfs")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("busybox-static not installed")
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	const uuid = "6b1a8b0e-2f4c-4b8e-9d2a-0c1e2f3a4b5c"
	const partuuid = "0d9f3c2b-1a2b-4c3d-8e4f-5a6b7c8d9e0f"
	err := Make(img, Options{Size: 48 << 20, Init: "#!/bin/sh\necho hi\n", UUID: uuid, PartUUID: partuuid, ESP: true})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := rootfind.Probe(f, 48<<20)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.Find(cmdline.Root{})
	if err != nil || c.Partition != 2 || c.FS.UUID != uuid || c.FS.Label != "isboot-root" {
		t.Fatalf("root %+v, %v; disk %+v", c, err, d)
	}
	if d.Partitions[1].PartUUID != partuuid {
		t.Errorf("PARTUUID %s, want %s", d.Partitions[1].PartUUID, partuuid)
	}
	off := d.Partitions[1].Start
	out, err := exec.Command("debugfs", "-R", "cat /sbin/init", img+"?offset="+strconv.FormatInt(off, 10)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "echo hi") {
		t.Errorf("debugfs cat /sbin/init: %v\n%s", err, out)
	}
}
