package netguard

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/isboot/isboot/netcfg"
)

// The watch tests run in a network namespace of their own holding a veth pair: the
// guard keeps one end ("boot") configured as a boot plan says while the test takes
// its address, routes and link away with netlink, as `ip` would.

// testNet is a namespace with the boot link configured as the plan says.
type testNet struct {
	ns   netns.NsHandle
	h    *netlink.Handle
	link netlink.Link
	spec *Spec
	plan *netcfg.Plan
}

var nsSeq atomic.Int32

func newTestNet(t *testing.T) *testNet {
	t.Helper()
	testenv.Require(t, "network namespace test")
	name := fmt.Sprintf("isb-ng-%d-%d", os.Getpid(), nsSeq.Add(1))
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ns, err := netns.NewNamed(name) // switches this thread into it
	if serr := netns.Set(orig); serr != nil {
		panic("cannot return to the original network namespace: " + serr.Error())
	}
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		ns.Close()
		netns.DeleteNamed(name)
	})
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "boot0"}, PeerName: "peer0"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"boot0", "peer0"} {
		l, err := h.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	l, err := h.LinkByName("boot0")
	if err != nil {
		t.Fatal(err)
	}
	gw := netip.MustParseAddr("10.77.0.1")
	p := &netcfg.Plan{
		MAC: l.Attrs().HardwareAddr, Addr: netip.MustParsePrefix("10.77.0.15/24"), Gateway: gw,
		Routes: []netcfg.Route{
			{Dst: netip.MustParsePrefix("0.0.0.0/0"), Via: gw, Purpose: "default"},
			{Dst: netip.MustParsePrefix("10.77.0.1/32"), Purpose: "target0"},
			{Dst: netip.MustParsePrefix("192.0.2.9/32"), Via: gw, Purpose: "target1"},
		},
	}
	// The boot's own configuration, by the boot's own code.
	applied, err := netcfg.Apply(context.Background(), p, netcfg.Options{
		Namespace: &ns, ResolvConf: os.DevNull, SetHostname: func(string) error { return nil },
		Hostname: func() (string, error) { return "", nil }, CarrierTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	applied.Close()
	return &testNet{ns: ns, h: h, link: l, plan: p, spec: SpecOf(p, "boot0", l.Attrs().Index)}
}

// restores collects what the guard reports.
type restores struct {
	mu  sync.Mutex
	all []Restore
	ch  chan Restore
}

func (r *restores) add(x Restore) {
	r.mu.Lock()
	r.all = append(r.all, x)
	r.mu.Unlock()
	select {
	case r.ch <- x:
	default:
	}
}

func (r *restores) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.all)
}

// watch starts the guard and returns once its first look found nothing to do.
func (n *testNet) watch(t *testing.T, resync time.Duration) *restores {
	t.Helper()
	r := &restores{ch: make(chan Restore, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, n.spec, Options{Namespace: &n.ns, Restored: r.add, Resync: resync, Logf: t.Logf})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("Watch ended with %v, want context.Canceled", err)
		}
	})
	time.Sleep(100 * time.Millisecond) // the first look, and the subscriptions in place
	if c := r.count(); c != 0 {
		t.Fatalf("the guard changed a configured link: %v", r.all)
	}
	return r
}

// waitRestore waits for the guard's next report and for the plan to be whole
// again, and returns the report and how long after the fault the plan was whole.
func (n *testNet) waitRestore(t *testing.T, r *restores, fault time.Time) (Restore, time.Duration) {
	t.Helper()
	select {
	case x := <-r.ch:
		took := time.Since(fault)
		if len(x.Failed) > 0 {
			t.Errorf("restore failed: %v", x)
		}
		if missing := n.missing(t); missing != "" {
			t.Errorf("after %v: still missing %s", x, missing)
		}
		return x, took
	case <-time.After(5 * time.Second):
		t.Fatalf("nothing restored in 5 s; missing: %s", n.missing(t))
	}
	return Restore{}, 0
}

// missing names what of the plan the namespace lacks ("" when it is all there).
func (n *testNet) missing(t *testing.T) string {
	l, err := n.h.LinkByIndex(n.spec.Index)
	if err != nil {
		return "the link"
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		return "link up"
	}
	addrs, _ := n.h.AddrList(l, unix.AF_INET)
	found := false
	for _, a := range addrs {
		if a.IPNet.String() == n.spec.Addr.String() {
			found = true
		}
	}
	if !found {
		return "the address"
	}
	for _, rt := range n.spec.Routes {
		nr := n.plan.NetlinkRoute(n.spec.Index, rt)
		have, _ := n.h.RouteListFiltered(unix.AF_INET, &netlink.Route{Dst: nr.Dst, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
		if len(have) == 0 {
			return "route " + rt.Dst.String()
		}
	}
	return ""
}

func TestWatchRestoresFlushedAddress(t *testing.T) {
	n := newTestNet(t)
	r := n.watch(t, time.Hour)
	t0 := time.Now()
	// `ip addr flush dev boot0`: the address goes, and with it every route from it.
	if err := n.h.AddrDel(n.link, n.plan.NetlinkAddr()); err != nil {
		t.Fatal(err)
	}
	x, took := n.waitRestore(t, r, t0)
	t.Logf("address flushed: %v, whole again after %v", x, took.Round(time.Millisecond))
	if !x.Addr.IsValid() || len(x.Routes) != 3 || x.LinkUp {
		t.Errorf("restore %+v: want the address and the 3 routes", x)
	}
}

func TestWatchRestoresDeletedRoute(t *testing.T) {
	n := newTestNet(t)
	r := n.watch(t, time.Hour)
	t0 := time.Now()
	if err := n.h.RouteDel(n.plan.NetlinkRoute(n.spec.Index, n.spec.Routes[2])); err != nil {
		t.Fatal(err)
	}
	x, took := n.waitRestore(t, r, t0)
	t.Logf("route deleted: %v, whole again after %v", x, took.Round(time.Millisecond))
	if x.Addr.IsValid() || x.LinkUp || len(x.Routes) != 1 || x.Routes[0] != "192.0.2.9/32 via 10.77.0.1 dev boot0" {
		t.Errorf("restore %+v: want that one route", x)
	}
}

func TestWatchRestoresDownedLink(t *testing.T) {
	n := newTestNet(t)
	r := n.watch(t, time.Hour)
	t0 := time.Now()
	// `ip link set boot0 down`: the kernel drops the link's IPv4 routes with it.
	if err := n.h.LinkSetDown(n.link); err != nil {
		t.Fatal(err)
	}
	x, took := n.waitRestore(t, r, t0)
	t.Logf("link downed: %v, whole again after %v", x, took.Round(time.Millisecond))
	if !x.LinkUp || len(x.Routes) != 3 {
		t.Errorf("restore %+v: want the link up and the 3 routes", x)
	}
	if took > time.Second {
		t.Errorf("restored after %v: not prompt", took)
	}
}

// Nothing changed, or someone made an equivalent change: the guard does nothing,
// however often it looks.
func TestWatchLeavesEquivalentConfiguration(t *testing.T) {
	n := newTestNet(t)
	r := n.watch(t, 50*time.Millisecond)
	// Equivalent: the same address set again (replace), a route to a target
	// replaced through another gateway on the same link: someone else's choice.
	if err := n.h.AddrReplace(n.link, n.plan.NetlinkAddr()); err != nil {
		t.Fatal(err)
	}
	other := n.plan.NetlinkRoute(n.spec.Index, n.spec.Routes[2])
	other.Gw = net.ParseIP("10.77.0.254")
	if err := n.h.RouteReplace(other); err != nil {
		t.Fatal(err)
	}
	// A change on another link is none of the guard's business.
	peer, err := n.h.LinkByName("peer0")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.h.LinkSetDown(peer); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // about 10 resync looks
	if c := r.count(); c != 0 {
		t.Errorf("the guard acted %d times on an equivalent configuration: %v", c, r.all)
	}
	have, _ := n.h.RouteListFiltered(unix.AF_INET, &netlink.Route{Dst: other.Dst, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if len(have) != 1 || !have[0].Gw.Equal(other.Gw) {
		t.Errorf("routes to %s: %v, want the replaced one only", other.Dst, have)
	}
}

// The guard follows the link by index through a rename (udev naming it in the real
// root) and says its new name.
func TestWatchFollowsRename(t *testing.T) {
	n := newTestNet(t)
	r := n.watch(t, time.Hour)
	if err := n.h.LinkSetDown(n.link); err != nil {
		t.Fatal(err)
	}
	// A rename needs the link down; the guard may put it up in between, so retry.
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := n.h.LinkSetName(n.link, "enp0s3")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rename: %v", err)
		}
		n.h.LinkSetDown(n.link)
	}
	// Let the guard finish with the renamed link, then take it down once more.
	time.Sleep(200 * time.Millisecond)
	for len(r.ch) > 0 {
		<-r.ch
	}
	t0 := time.Now()
	if err := n.h.LinkSetDown(n.link); err != nil {
		t.Fatal(err)
	}
	x, _ := n.waitRestore(t, r, t0)
	if x.Link != "enp0s3" || !x.LinkUp {
		t.Errorf("restore %+v: want link up on enp0s3", x)
	}
}

// A link that is gone cannot be put back: the guard says so once, however often it
// looks again, and Watch goes on until cancelled.
func TestWatchSaysLinkGoneOnce(t *testing.T) {
	n := newTestNet(t)
	r := n.watch(t, 50*time.Millisecond)
	if err := n.h.LinkDel(n.link); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // retries back off from 100 ms, and resyncs every 50 ms
	r.mu.Lock()
	defer r.mu.Unlock()
	// A look under way when the link went may first fail on its address and
	// routes; then the missing link is said once.
	last := len(r.all) - 1
	if last < 0 || last > 1 || !strings.Contains(r.all[last].String(), "Link not found") {
		t.Fatalf("reports %v: want the missing link said once", r.all)
	}
	for _, x := range r.all {
		if x.PutBack() {
			t.Errorf("put back something on a deleted link: %v", x)
		}
	}
	t.Logf("reported: %v", r.all)
}
