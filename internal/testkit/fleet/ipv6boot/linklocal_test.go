package ipv6boot

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/bootplan"
	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/iscsi"
	"github.com/isboot/isboot/netcfg"
)

const (
	bootLink = "eth-boot"
	peerLink = "eth-peer"
)

var bootMAC = net.HardwareAddr{0x02, 0x1b, 0, 0, 0x06, 0x10}

// linkNet is two network namespaces joined by a veth pair: the boot end (down, as a
// fresh NIC) and the target's end, up with fe80::1.
type linkNet struct {
	boot     netns.NsHandle
	peerName string
}

func newLinkNet(t *testing.T) *linkNet {
	t.Helper()
	testenv.Require(t, "link-local target test", "tgtd", "tgtadm", "ip")
	ln := &linkNet{}
	ln.boot, _ = newNamespace(t, "boot")
	peer, peerName := newNamespace(t, "peer")
	ln.peerName = peerName
	hb, err := netlink.NewHandleAt(ln.boot, unix.NETLINK_ROUTE)
	must(t, err)
	defer hb.Close()
	hp, err := netlink.NewHandleAt(peer, unix.NETLINK_ROUTE)
	must(t, err)
	defer hp.Close()
	must(t, hb.LinkAdd(&netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: bootLink, HardwareAddr: bootMAC},
		PeerName:  peerLink, PeerNamespace: netlink.NsFd(peer),
	}))
	for _, h := range []*netlink.Handle{hb, hp} {
		lo, err := h.LinkByName("lo")
		must(t, err)
		must(t, h.LinkSetUp(lo))
	}
	pl, err := hp.LinkByName(peerLink)
	must(t, err)
	must(t, hp.LinkSetUp(pl))
	// No DAD on the target's side: tgtd binds the address at once.
	must(t, hp.AddrAdd(pl, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("fe80::1"), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}))
	return ln
}

// newNamespace creates a named network namespace, deleted in t.Cleanup.
func newNamespace(t *testing.T, role string) (netns.NsHandle, string) {
	t.Helper()
	name := fmt.Sprintf("isb6-%d-%s", os.Getpid(), role)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	must(t, err)
	defer orig.Close()
	ns, err := netns.NewNamed(name) // switches this thread into it
	if serr := netns.Set(orig); serr != nil {
		panic("cannot return to the original network namespace: " + serr.Error())
	}
	must(t, err)
	t.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	return ns, name
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// dialIn runs iscsi.Dial on a thread in ns: the session's first connection is made
// there, and a socket keeps its namespace wherever it is used.
func dialIn(ns netns.NsHandle, cfg iscsi.Config) (*iscsi.Session, error) {
	type result struct {
		s   *iscsi.Session
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := netns.Set(ns); err != nil {
			ch <- result{nil, err}
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := iscsi.Dial(ctx, cfg)
		ch <- result{s, err}
	}()
	r := <-ch
	return r.s, r.err
}

// TestLinkLocalTargetGetsZone: an iBFT whose NIC and target are link-local (fe80::10
// and fe80::1, the NIC's global flag clear). The plan's portal has no zone (the iBFT
// names no interface); after netcfg configured the NIC, ZonePortals gives it the boot
// NIC's interface, and the initiator logs in to tgtd listening on [fe80::1%eth-peer]
// in the other namespace and reads the LUN. The same portal without the zone cannot
// be dialed, and netroot= forms with and without a zone plan the same session.
func TestLinkLocalTargetGetsZone(t *testing.T) {
	ln := newLinkNet(t)
	port := testtarget.FreePort(t, portLo, portHi)
	backing := testtarget.CreateBacking(t, t.TempDir(), 8<<20)
	f, err := os.OpenFile(backing, os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt([]byte("link-local LUN"), 4096)
	must(t, err)
	must(t, f.Close())
	tgt := testtarget.StartTgtd(t, testtarget.TgtdOptions{
		Host: "fe80::1%" + peerLink, Netns: ln.peerName, Port: port,
		ControlPort: testtarget.FreeControlPort(t, ctlLo, ctlHi), Backing: backing,
	})
	tab := &ibft.Table{
		Source:    "test",
		Initiator: ibft.Initiator{Flags: ibft.FlagValid | ibft.FlagBootSelected, Name: "iqn.2026-01.org.isboot.test:linklocal"},
		NICs: []ibft.NIC{{Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("fe80::10"), Prefix: 64,
			Origin: ibft.OriginManual, MAC: bootMAC}},
		Targets: []ibft.Target{{Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("fe80::1"),
			Port: uint16(port), LUN: 1, LUNRaw: [8]byte{0, 1}, Name: tgt.IQN}},
	}
	noCmdline, err := cmdline.ParseString("")
	must(t, err)
	plan, err := bootplan.Make(noCmdline, tab)
	must(t, err)
	portal := "[fe80::1]:" + strconv.Itoa(port)
	if len(plan.ISCSI.Portals) != 1 || plan.ISCSI.Portals[0] != portal {
		t.Fatalf("planned portals %q, want [%s]", plan.ISCSI.Portals, portal)
	}
	np, err := bootplan.Network(noCmdline, tab, plan.NIC)
	must(t, err)
	t0 := time.Now()
	applied, err := netcfg.Apply(context.Background(), np, netcfg.Options{
		Namespace: &ln.boot, ResolvConf: filepath.Join(t.TempDir(), "resolv.conf"), Sysfs: t.TempDir(),
		SetHostname: func(string) error { return errors.New("test: hostname not expected") },
		Logf:        t.Logf, CarrierTimeout: 5 * time.Second, DADTimeout: 5 * time.Second,
	})
	must(t, err)
	defer applied.Undo()
	t.Logf("netcfg: %s configured in %v (DAD included)", applied.Link, time.Since(t0).Round(time.Millisecond))

	zoned := bootplan.ZonePortals(plan.ISCSI.Portals, applied.Link)
	want := "[fe80::1%" + bootLink + "]:" + strconv.Itoa(port)
	if len(zoned) != 1 || zoned[0] != want {
		t.Fatalf("zoned portals %q, want [%s]", zoned, want)
	}

	bounded := iscsi.RetryPolicy{MaxAttempts: 1}
	cfg := plan.ISCSI
	cfg.Retry, cfg.Logf = bounded, t.Logf
	if s, err := dialIn(ln.boot, cfg); err == nil {
		s.Close()
		t.Error("the portal without a zone could be dialed; the test proves nothing")
	} else {
		t.Logf("without the zone, as expected: %v", err)
	}

	for _, tc := range []struct{ name, cmdline string }{
		{"ibft", ""},
		{"netroot with zone", fmt.Sprintf("netroot=iscsi:[fe80::1%%%s]::%d:1:%s", bootLink, port, tgt.IQN)},
		{"netroot without zone", fmt.Sprintf("netroot=iscsi:[fe80::1]::%d:1:%s", port, tgt.IQN)},
	} {
		c, err := cmdline.ParseString(tc.cmdline)
		must(t, err)
		p, err := bootplan.Make(c, tab)
		must(t, err)
		cfg := p.ISCSI
		cfg.Portals = bootplan.ZonePortals(cfg.Portals, applied.Link)
		cfg.Retry, cfg.Logf = bounded, t.Logf
		if len(cfg.Portals) != 1 || cfg.Portals[0] != want {
			t.Errorf("%s: portals %q, want [%s]", tc.name, cfg.Portals, want)
			continue
		}
		t0 := time.Now()
		s, err := dialIn(ln.boot, cfg)
		if err != nil {
			t.Errorf("%s: dial %s: %v\n%s", tc.name, want, err, tgt.Log())
			continue
		}
		buf := make([]byte, 512)
		if _, err := s.LUN().ReadAt(buf, 4096); err != nil || string(buf[:14]) != "link-local LUN" {
			t.Errorf("%s: read %q, %v; want %q", tc.name, buf[:14], err, "link-local LUN")
		}
		t.Logf("%s: logged in to %s and read the LUN in %v", tc.name, want, time.Since(t0).Round(time.Millisecond))
		s.Close()
	}
}
