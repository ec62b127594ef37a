package rootfind

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/internal/testkit/testenv"
)

const (
	rootUUID  = "2f5e0c4a-1b2c-4d3e-8f90-a1b2c3d4e5f6"
	dataUUID  = "11111111-2222-4333-8444-555555555555"
	rootPUUID = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
)

func need(t *testing.T, tools ...string) {
	t.Helper()
	testenv.RequireTools(t, "rootfind test", tools...)
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// gptImage makes a 64 MiB GPT disk: 1 ESP (vfat), 2 "rootfs" (ext4), 3 "data" (ext4).
func gptImage(t *testing.T) string {
	need(t, "sgdisk", "mke2fs", "mkfs.vfat")
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	run(t, "sgdisk", "-n1:2048:+8M", "-t1:ef00", "-c1:esp",
		"-n2:0:+24M", "-t2:8300", "-c2:rootfs", "-u2:"+rootPUUID,
		"-n3:0:0", "-t3:8300", "-c3:data", img)
	run(t, "mkfs.vfat", "-i", "1234abcd", "-n", "EFI", "--offset", "2048", img, "8192")
	run(t, "mke2fs", "-q", "-F", "-t", "ext4", "-U", rootUUID, "-L", "myroot", "-E", "offset="+strconv.Itoa((2048+16384)*512), img, "24M")
	run(t, "mke2fs", "-q", "-F", "-t", "ext4", "-U", dataUUID, "-L", "data", "-E", "offset="+strconv.Itoa((2048+16384+49152)*512), img, "8M")
	return img
}

func probeFile(t *testing.T, img string) *Disk {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	d, err := Probe(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestProbeGPT(t *testing.T) {
	d := probeFile(t, gptImage(t))
	if d.Table != "gpt" || len(d.Partitions) != 3 {
		t.Fatalf("got %s with %d partitions: %+v", d.Table, len(d.Partitions), d.Partitions)
	}
	p := d.Partitions
	if p[0].FS.Type != "vfat" || p[0].FS.UUID != "1234-ABCD" || p[0].FS.Label != "EFI" || p[0].PartLabel != "esp" {
		t.Errorf("partition 1: %+v", p[0])
	}
	if p[1].FS != (FS{"ext4", rootUUID, "myroot"}) || p[1].PartUUID != rootPUUID || p[1].PartLabel != "rootfs" ||
		p[1].Type != "0fc63daf-8483-4772-8e79-3d69d8477de4" || p[1].Start != (2048+16384)*512 {
		t.Errorf("partition 2: %+v", p[1])
	}
	if p[2].FS.UUID != dataUUID || p[2].Number != 3 {
		t.Errorf("partition 3: %+v", p[2])
	}
}

func TestFindGPT(t *testing.T) {
	d := probeFile(t, gptImage(t))
	tests := []struct {
		root     string
		wantPart int
		wantErr  string
	}{
		{"", 2, ""}, // the ESP is skipped: vfat is not a Linux root
		{"root=UUID=" + rootUUID, 2, ""},
		{"root=UUID=" + strings.ToUpper(dataUUID), 3, ""},
		{"root=LABEL=data", 3, ""},
		{"root=LABEL=myroot", 2, ""},
		{"root=PARTUUID=" + rootPUUID, 2, ""},
		{"root=PARTLABEL=data", 3, ""},
		{"root=UUID=1234-abcd", 1, ""},
		{"root=LABEL=nope", 0, `no partition with LABEL=nope (gpt: 1 PARTUUID=`},
		{"root=PARTLABEL=nope", 0, `PARTLABEL="rootfs" ext4 UUID=` + rootUUID},
		{"root=/dev/nbd0p2", 0, "names a device path"},
	}
	for _, tt := range tests {
		t.Run(tt.root, func(t *testing.T) {
			c, err := cmdline.ParseString(tt.root)
			if err != nil {
				t.Fatal(err)
			}
			got, err := d.Find(c.Root)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Find: %v, want error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got.Partition != tt.wantPart {
				t.Fatalf("Find = %+v, %v; want partition %d", got, err, tt.wantPart)
			}
		})
	}
}

func TestProbeMBR(t *testing.T) {
	need(t, "sfdisk", "mke2fs")
	img := filepath.Join(t.TempDir(), "mbr.img")
	os.WriteFile(img, nil, 0o644)
	os.Truncate(img, 32<<20)
	cmd := exec.Command("sfdisk", "-q", img)
	cmd.Stdin = strings.NewReader("label: dos\nlabel-id: 0xdeadbeef\nstart=2048, size=8192, type=c\nstart=10240, type=83\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	run(t, "mke2fs", "-q", "-F", "-t", "ext3", "-U", rootUUID, "-E", "offset="+strconv.Itoa(10240*512), img, "16M")
	d := probeFile(t, img)
	if d.Table != "mbr" || len(d.Partitions) != 2 {
		t.Fatalf("got %+v", d)
	}
	if p := d.Partitions[1]; p.PartUUID != "deadbeef-02" || p.FS.Type != "ext3" || p.FS.MountType() != "ext4" {
		t.Errorf("partition 2: %+v", p)
	}
	c, err := d.Find(cmdline.Root{Kind: cmdline.RootPartUUID, Value: "deadbeef-02"})
	if err != nil || c.Partition != 2 {
		t.Errorf("Find PARTUUID: %+v %v", c, err)
	}
	c, err = d.Find(cmdline.Root{})
	if err != nil || c.Partition != 2 {
		t.Errorf("Find default: %+v %v", c, err)
	}
}

func TestWholeDevice(t *testing.T) {
	need(t, "mke2fs")
	img := filepath.Join(t.TempDir(), "whole.img")
	run(t, "mke2fs", "-q", "-F", "-t", "ext2", "-L", "bare", img, "4M")
	d := probeFile(t, img)
	if d.Table != "" || d.FS.Type != "ext2" || d.FS.Label != "bare" {
		t.Fatalf("got %+v", d)
	}
	for _, root := range []cmdline.Root{{}, {Kind: cmdline.RootLabel, Value: "bare"}} {
		c, err := d.Find(root)
		if err != nil || c.Partition != 0 || c.FS.Type != "ext2" {
			t.Errorf("Find(%v) = %+v, %v", root, c, err)
		}
	}
	// An empty LUN: nothing found, the whole device is the answer of last resort.
	d = &Disk{}
	if c, err := d.Find(cmdline.Root{}); err != nil || c.Partition != 0 {
		t.Errorf("empty disk: %+v %v", c, err)
	}
}

func TestSyntheticSuperblocks(t *testing.T) {
	uuid := []byte{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef}
	const want = "01234567-89ab-cdef-0123-456789abcdef"
	xfs := make([]byte, 0x11000)
	copy(xfs, "XFSB")
	copy(xfs[32:], uuid)
	copy(xfs[108:], "xroot")
	btrfs := make([]byte, 0x11000)
	copy(btrfs[0x10040:], "_BHRfS_M")
	copy(btrfs[0x10020:], uuid)
	copy(btrfs[0x1012b:], "broot")
	for _, tt := range []struct {
		buf  []byte
		want FS
	}{
		{xfs, FS{"xfs", want, "xroot"}},
		{btrfs, FS{"btrfs", want, "broot"}},
		{make([]byte, 100), FS{}},
		{nil, FS{}},
	} {
		if got := ProbeFS(bytes.NewReader(tt.buf)); got != tt.want {
			t.Errorf("ProbeFS = %+v, want %+v", got, tt.want)
		}
	}
}

// A GPT whose partition runs past the device end (a truncated image) is one clear error.
func TestPartitionPastEnd(t *testing.T) {
	img := gptImage(t)
	f, _ := os.Open(img)
	defer f.Close()
	_, err := Probe(f, 16<<20)
	if err == nil || !strings.Contains(err.Error(), "past the device") {
		t.Errorf("got %v", err)
	}
}

// mbrLogicalImage makes a 64 MiB MBR disk with primary 1, extended 2 holding logical
// 5 (swap type) and 6 (ext4 root), the layout Debian's installer makes on BIOS disks.
func mbrLogicalImage(t *testing.T) string {
	need(t, "sfdisk", "mke2fs")
	img := filepath.Join(t.TempDir(), "logical.img")
	os.WriteFile(img, nil, 0o644)
	os.Truncate(img, 64<<20)
	cmd := exec.Command("sfdisk", "-q", img)
	cmd.Stdin = strings.NewReader("label: dos\nlabel-id: 0xcafe0001\n" +
		"start=2048, size=8192, type=83\nstart=10240, type=5\n" +
		"start=12288, size=8192, type=82\nstart=22528, size=40960, type=83\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	run(t, "mke2fs", "-q", "-F", "-t", "ext4", "-U", rootUUID, "-L", "logroot", "-E", "offset="+strconv.Itoa(22528*512), img, "20M")
	return img
}

// Logical partitions are found, numbered and named (PARTUUID) as the kernel does;
// util-linux's partx, which follows the kernel's rules, is the reference.
func TestProbeMBRLogical(t *testing.T) {
	img := mbrLogicalImage(t)
	need(t, "partx")
	out, err := exec.Command("partx", "-g", "-o", "NR,START,SECTORS,UUID", img).Output()
	if err != nil {
		t.Fatalf("partx: %v", err)
	}
	var want []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		if f[0] == "2" { // the extended partition itself holds no filesystem
			continue
		}
		want = append(want, strings.Join(f, " "))
	}
	d := probeFile(t, img)
	var got []string
	for _, p := range d.Partitions {
		got = append(got, fmt.Sprintf("%d %d %d %s", p.Number, p.Start/512, p.Size/512, p.PartUUID))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("partitions:\n%s\npartx says:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, root := range []cmdline.Root{
		{Kind: cmdline.RootUUID, Value: rootUUID},
		{Kind: cmdline.RootLabel, Value: "logroot"},
		{Kind: cmdline.RootPartUUID, Value: "cafe0001-06"},
		{}, // the first partition with a Linux filesystem: 1 has none, 5 is swap
	} {
		c, err := d.Find(root)
		if err != nil || c.Partition != 6 || c.FS.Type != "ext4" {
			t.Errorf("Find(%v) = %+v, %v; want partition 6 (ext4)", root, c, err)
		}
	}
}

// A hostile EBR chain (a link back to itself, a link past the device) ends the walk
// with what was found: no hang, no panic, the primaries still usable.
func TestMBRLogicalChainDefects(t *testing.T) {
	img := mbrLogicalImage(t)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	// The first EBR sits at the extended partition's start (sector 10240); its
	// second entry links to the next EBR, relative to that start.
	ebr := b[10240*512 : 10241*512]
	link := ebr[446+16 : 446+32]
	for _, tc := range []struct {
		name string
		rel  uint32
	}{{"loop", 0}, {"past the end", 1 << 30}} {
		t.Run(tc.name, func(t *testing.T) {
			binary.LittleEndian.PutUint32(link[8:], tc.rel)
			d, err := Probe(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			var nums []int
			for _, p := range d.Partitions {
				nums = append(nums, p.Number)
			}
			if fmt.Sprint(nums) != "[1 5]" {
				t.Errorf("partitions %v, want [1 5]", nums)
			}
		})
	}
}
