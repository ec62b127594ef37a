// Command resizeguest runs inside TestKernelResizeVM's guest: it attaches a memory
// disk to /dev/nbd0 through nbd.Attach, grows the disk, calls Attachment.Resize and
// checks that the kernel's device followed and reads past the old end. It prints
// RESULT=PASS or RESULT=FAIL.
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/nbd"
)

// growable is a memory disk whose size the test changes, as a LUN's capacity changes.
type growable struct {
	*blockdev.Mem
	size atomic.Int64
}

func (g *growable) Size() int64 { return g.size.Load() }

func main() {
	if err := run(); err != nil {
		fmt.Printf("RESULT=FAIL %v\n", err)
		os.Exit(1)
	}
	fmt.Println("RESULT=PASS")
}

func run() error {
	dev := &growable{Mem: blockdev.NewMem(64<<20, 512, false)}
	dev.size.Store(16 << 20)
	tail := []byte("written at the end of the grown disk")
	if _, err := dev.WriteAt(append(tail, make([]byte, 512-len(tail))...), 32<<20-512); err != nil {
		return err
	}
	att, err := nbd.Attach(nbd.NewServer(dev, nbd.Options{}), nbd.AttachConfig{
		KernelConfig: nbd.KernelConfig{Index: 0, DeadConnTimeout: time.Minute}})
	if err != nil {
		return err
	}
	defer att.Close()
	if n := sectors(); n != 16<<20>>9 {
		return fmt.Errorf("nbd0 has %d sectors before the resize, want %d", n, 16<<20>>9)
	}
	dev.size.Store(32 << 20)
	if err := att.Resize(32 << 20); err != nil {
		return err
	}
	if n := sectors(); n != 32<<20>>9 {
		return fmt.Errorf("nbd0 has %d sectors after the resize, want %d", n, 32<<20>>9)
	}
	f, err := os.Open("/dev/nbd0")
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 512)
	if _, err := f.ReadAt(buf, 32<<20-512); err != nil {
		return fmt.Errorf("read past the old end: %w", err)
	}
	if !strings.HasPrefix(string(buf), string(tail)) {
		return fmt.Errorf("read past the old end: %q", buf[:len(tail)])
	}
	fmt.Printf("STEP nbd0 grew from 16 MiB to 32 MiB; the new end reads back\n")
	return nil
}

func sectors() int64 {
	b, _ := os.ReadFile("/sys/block/nbd0/size")
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}
