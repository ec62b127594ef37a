package testtarget

import (
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gostor/gotgt/pkg/config"
	_ "github.com/gostor/gotgt/pkg/port/iscsit" // registers the "iscsi" driver
	"github.com/gostor/gotgt/pkg/scsi"
	_ "github.com/gostor/gotgt/pkg/scsi/backingstore" // registers the "file" store
	"github.com/sirupsen/logrus"
)

// GotgtOptions configures the in-process gotgt target (no CHAP support).
type GotgtOptions struct {
	Port    int    // TCP port; gotgt listens on all addresses of it
	IQN     string // default iqn.2026-01.org.isboot.test:gotgt
	Backing string // default a sparse file in a temp dir
	Size    int64  // default 64 MiB
}

// Gotgt is the in-process gotgt target. gotgt keeps package globals and calls
// os.Exit when it cannot listen, so a test binary gets exactly one, started once.
type Gotgt struct {
	opts GotgtOptions
	IQN  string
	LUN  uint64
}

func (g *Gotgt) Addr() string      { return fmt.Sprintf("127.0.0.1:%d", g.opts.Port) }
func (g *Gotgt) TargetIQN() string { return g.IQN }
func (g *Gotgt) LUNNumber() uint64 { return g.LUN }
func (g *Gotgt) Backing() string   { return g.opts.Backing }

var gotgtOnce struct {
	sync.Mutex
	g   *Gotgt
	err error
}

// StartGotgt starts gotgt in this process on first use and returns the same instance
// afterwards (options of later calls are ignored). It is never stopped: gotgt has no
// way to release its globals; the process exit ends it.
func StartGotgt(t testing.TB, opts GotgtOptions) *Gotgt {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped under -short")
	}
	if raceEnabled {
		t.Skip("gotgt v0.2.2 has data races of its own: not run under -race")
	}
	gotgtOnce.Lock()
	defer gotgtOnce.Unlock()
	if gotgtOnce.g != nil || gotgtOnce.err != nil {
		if gotgtOnce.err != nil {
			t.Fatalf("testtarget: gotgt: %v", gotgtOnce.err)
		}
		return gotgtOnce.g
	}
	g, err := startGotgt(opts)
	gotgtOnce.g, gotgtOnce.err = g, err
	if err != nil {
		t.Fatalf("testtarget: gotgt: %v", err)
	}
	return g
}

func startGotgt(opts GotgtOptions) (*Gotgt, error) {
	if opts.Port == 0 {
		return nil, fmt.Errorf("GotgtOptions needs Port")
	}
	if opts.IQN == "" {
		opts.IQN = "iqn.2026-01.org.isboot.test:gotgt"
	}
	if opts.Size == 0 {
		opts.Size = 64 << 20
	}
	if opts.Backing == "" {
		dir, err := tempDir()
		if err != nil {
			return nil, err
		}
		opts.Backing = dir + "/gotgt.img"
		if err := sparseFile(opts.Backing, opts.Size); err != nil {
			return nil, err
		}
	}
	// Listen first ourselves: gotgt would os.Exit the whole test binary on a busy port.
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", opts.Port))
	if err != nil {
		return nil, fmt.Errorf("port %d busy: %v", opts.Port, err)
	}
	l.Close()
	logrus.SetOutput(io.Discard)
	cfg := &config.Config{
		Storages:     []config.BackendStorage{{DeviceID: 1000, Path: "file:" + opts.Backing, Online: true, BlockShift: 9}},
		ISCSIPortals: []config.ISCSIPortalInfo{{ID: 0, Portal: fmt.Sprintf("127.0.0.1:%d", opts.Port)}},
		ISCSITargets: map[string]config.ISCSITarget{
			opts.IQN: {TPGTs: map[string][]uint64{"1": {0}}, LUNs: map[string]uint64{"1": 1000}},
		},
	}
	if err := scsi.InitSCSILUMap(cfg); err != nil {
		return nil, err
	}
	driver, err := scsi.NewTargetDriver("iscsi", scsi.NewSCSITargetService())
	if err != nil {
		return nil, err
	}
	if err := driver.NewTarget(opts.IQN, cfg); err != nil {
		return nil, err
	}
	go driver.Run(opts.Port)
	g := &Gotgt{opts: opts, IQN: opts.IQN, LUN: 1}
	if err := waitListening(g.Addr(), 10*time.Second); err != nil {
		return nil, err
	}
	return g, nil
}
