package netcfg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The tests below configure one end of a veth pair in a network namespace ("boot",
// where isboot runs) from an iBFT table and talk to listeners in the other ("peer",
// the target's side). Namespaces are named isb-nc-*.

const (
	bootLink = "eth-boot"
	peerLink = "eth-peer"
)

var (
	bootMAC = mac("02:1b:00:00:00:10")
	peerMAC = mac("02:1b:00:00:00:01")
)

type testNet struct {
	boot, peer netns.NsHandle
	hb, hp     *netlink.Handle
}

var nsSeq atomic.Int32

func requireNetns(t *testing.T) {
	t.Helper()
	testenv.Require(t, "network namespace test")
}

var sweepOnce sync.Once

// sweepStaleNamespaces deletes isb-nc-<pid>-* namespaces of test processes that died
// before their cleanup ran (a timeout panic skips t.Cleanup).
func sweepStaleNamespaces() {
	names, _ := filepath.Glob("/var/run/netns/isb-nc-*")
	for _, path := range names {
		var pid int
		if _, err := fmt.Sscanf(filepath.Base(path), "isb-nc-%d-", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			netns.DeleteNamed(filepath.Base(path))
		}
	}
}

// newNamespace creates a named network namespace, removed in t.Cleanup.
func newNamespace(t *testing.T, role string) netns.NsHandle {
	t.Helper()
	sweepOnce.Do(sweepStaleNamespaces)
	name := fmt.Sprintf("isb-nc-%d-%d-%s", os.Getpid(), nsSeq.Add(1), role)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name) // also switches this thread into it
	if serr := netns.Set(orig); serr != nil {
		panic("cannot return to the original network namespace: " + serr.Error())
	}
	if err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	return ns
}

// inNS runs fn on a thread in ns. Sockets keep the namespace they were created in,
// so listeners and connections made in fn can be used anywhere.
func inNS(t *testing.T, ns netns.NsHandle, fn func()) {
	t.Helper()
	must(t, inNamespace(&ns, func() error { fn(); return nil }))
}

// newTestNet makes the two namespaces and the veth pair between them. The boot end is
// left down, as a fresh NIC is; the peer end is up, with loopback up on both sides.
func newTestNet(t *testing.T) *testNet {
	requireNetns(t)
	tn := &testNet{boot: newNamespace(t, "boot"), peer: newNamespace(t, "peer")}
	var err error
	if tn.hb, err = netlink.NewHandleAt(tn.boot, unix.NETLINK_ROUTE); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.hb.Close)
	if tn.hp, err = netlink.NewHandleAt(tn.peer, unix.NETLINK_ROUTE); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.hp.Close)
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: bootLink, HardwareAddr: bootMAC},
		PeerName:  peerLink, PeerHardwareAddr: peerMAC, PeerNamespace: netlink.NsFd(tn.peer),
	}
	must(t, tn.hb.LinkAdd(veth))
	for _, h := range []*netlink.Handle{tn.hb, tn.hp} {
		lo, err := h.LinkByName("lo")
		must(t, err)
		must(t, h.LinkSetUp(lo))
	}
	must(t, tn.hp.LinkSetUp(tn.peerLink(t)))
	return tn
}

func (tn *testNet) peerLink(t *testing.T) netlink.Link {
	l, err := tn.hp.LinkByName(peerLink)
	must(t, err)
	return l
}

// peerAddr adds an address on the peer side without duplicate address detection, so
// only the boot side's DAD is waited for.
func (tn *testNet) peerAddr(t *testing.T, link string, prefix string) {
	t.Helper()
	l, err := tn.hp.LinkByName(link)
	must(t, err)
	must(t, tn.hp.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix(prefix)), Flags: unix.IFA_F_NODAD}))
}

// listen starts a TCP listener in the peer namespace that answers every connection
// with the remote address it saw.
func (tn *testNet) listen(t *testing.T, ip string) string {
	t.Helper()
	var l net.Listener
	var err error
	inNS(t, tn.peer, func() { l, err = net.Listen("tcp", net.JoinHostPort(ip, "0")) })
	must(t, err)
	answerEach(t, l, func(c net.Conn) string { return c.RemoteAddr().(*net.TCPAddr).IP.String() })
	return l.Addr().String()
}

// answerEach answers every connection to l with one line, until the test ends.
func answerEach(t *testing.T, l net.Listener, line func(net.Conn) string) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, line(c)+"\n")
			c.Close()
		}
	}()
}

// dial connects from the boot namespace and returns the source address the peer saw.
func (tn *testNet) dial(t *testing.T, addr string) (string, error) {
	t.Helper()
	var c net.Conn
	var err error
	inNS(t, tn.boot, func() { c, err = net.DialTimeout("tcp", addr, 3*time.Second) })
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	return strings.TrimSpace(string(b)), err
}

func (tn *testNet) options(t *testing.T) Options {
	ns := tn.boot
	return Options{
		Namespace:  &ns,
		ResolvConf: filepath.Join(t.TempDir(), "resolv.conf"),
		Sysfs:      t.TempDir(), // the veth has no PCI device; keep the host's sysfs out
		// Tests that do not run in their own UTS namespace must not touch the hostname.
		SetHostname: func(string) error { return errors.New("test: hostname not expected") },
		Logf:        t.Logf,
		LinkTimeout: 3 * time.Second, CarrierTimeout: 3 * time.Second, DADTimeout: 5 * time.Second,
	}
}

// routes lists the main-table routes of the boot namespace as "dst via gw dev" strings
// (kernel-made prefix routes and IPv6 link-local/multicast ones included).
func (tn *testNet) routes(t *testing.T, family int) []string {
	t.Helper()
	rs, err := tn.hb.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	must(t, err)
	var out []string
	for _, r := range rs {
		s := "default"
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				s = r.Dst.String()
			}
		}
		if r.Gw != nil {
			s += " via " + r.Gw.String()
		}
		if l, err := tn.hb.LinkByIndex(r.LinkIndex); err == nil {
			s += " dev " + l.Attrs().Name
		}
		if r.Src != nil {
			s += " src " + r.Src.String()
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func (tn *testNet) addrs(t *testing.T, link string) []string {
	t.Helper()
	l, err := tn.hb.LinkByName(link)
	must(t, err)
	as, err := tn.hb.AddrList(l, unix.AF_UNSPEC)
	must(t, err)
	var out []string
	for _, a := range as {
		if !a.IP.IsLinkLocalUnicast() {
			out = append(out, a.IPNet.String())
		}
	}
	slices.Sort(out)
	return out
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func applyTable(t *testing.T, tb *ibft.Table, o Options) (*Applied, error) {
	t.Helper()
	p, err := NewPlan(tb, tb.NICs[0].Index, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("plan:\n%s", p)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	a, err := Apply(ctx, p, o)
	t.Logf("Apply took %v", time.Since(start))
	return a, err
}

func ipv4Table() *ibft.Table {
	return &ibft.Table{
		Source: "test",
		NICs: []ibft.NIC{{
			Index: 0, Flags: ibft.FlagValid | ibft.FlagBootSelected,
			IP: netip.MustParseAddr("192.168.50.10"), Prefix: 24, Origin: ibft.OriginManual,
			Gateway: netip.MustParseAddr("192.168.50.1"),
			DNS:     [2]netip.Addr{netip.MustParseAddr("192.168.50.53"), netip.MustParseAddr("192.168.50.54")},
			DHCP:    netip.MustParseAddr("192.168.50.1"), // iPXE fills it in even for a static NIC
			MAC:     bootMAC, PCIBDF: 0x0018, Hostname: "isb-nc-booted",
		}},
		Targets: []ibft.Target{
			{Index: 0, Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("10.99.0.5"), Port: 3260, NIC: 0, Name: "iqn.2025-01.test:far"},
			{Index: 1, Flags: ibft.FlagValid, IP: netip.MustParseAddr("192.168.50.1"), Port: 3260, NIC: 0, Name: "iqn.2025-01.test:near"},
		},
	}
}

// TestApplyStaticIPv4 is the full round: driver-less link found by MAC, address,
// default route, on-link and routed target routes, DNS, hostname (in a private UTS
// namespace), connectivity, idempotence, and undo leaving unrelated state alone.
func TestApplyStaticIPv4(t *testing.T) {
	tn := newTestNet(t)
	tn.peerAddr(t, peerLink, "192.168.50.1/24")
	tn.peerAddr(t, "lo", "10.99.0.5/32") // a target behind the gateway
	far := tn.listen(t, "10.99.0.5")
	near := tn.listen(t, "192.168.50.1")

	// Unrelated state that must survive apply and undo.
	lo, err := tn.hb.LinkByName("lo")
	must(t, err)
	must(t, tn.hb.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("172.16.9.1/32"))}))
	must(t, tn.hb.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("198.18.0.0/24")), Scope: netlink.SCOPE_LINK}))
	o := tn.options(t)
	oldResolv := "search example.org\nnameserver 192.0.2.1\n"
	must(t, os.WriteFile(o.ResolvConf, []byte(oldResolv), 0o644))
	routesBefore := tn.routes(t, unix.AF_INET)

	if _, err := tn.dial(t, far); err == nil {
		t.Fatal("the far target is reachable before Apply: the test proves nothing")
	}

	// The hostname part needs its own UTS namespace: run everything on a thread that
	// unshares one and is never returned to the runtime's pool (it exits with the
	// goroutine because it stays locked).
	o.SetHostname, o.Hostname = nil, nil
	type result struct {
		hostBefore, hostSet, hostAfter string
		a1, a2                         *Applied
		err1, err2, undoErr            error
		afterApply                     func()
	}
	var r result
	r.afterApply = func() {
		for _, target := range []string{far, near} {
			src, err := tn.dial(t, target)
			if err != nil || src != "192.168.50.10" {
				t.Errorf("connect to %s after Apply: peer saw source %q, err %v; want 192.168.50.10", target, src, err)
			}
		}
		wantRoutes := []string{
			"10.99.0.5/32 via 192.168.50.1 dev eth-boot src 192.168.50.10",
			"192.168.50.1/32 dev eth-boot src 192.168.50.10",
			"192.168.50.0/24 dev eth-boot src 192.168.50.10", // the kernel's prefix route
			"default via 192.168.50.1 dev eth-boot src 192.168.50.10",
		}
		got := tn.routes(t, unix.AF_INET)
		want := slices.Concat(routesBefore, wantRoutes)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("routes after Apply:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
		if got := tn.addrs(t, bootLink); !slices.Equal(got, []string{"192.168.50.10/24"}) {
			t.Errorf("addresses of %s = %q", bootLink, got)
		}
		b, _ := os.ReadFile(o.ResolvConf)
		wantResolv := "# nameservers from the iBFT nic0, written by isboot\nnameserver 192.168.50.53\nnameserver 192.168.50.54\n" + oldResolv
		if string(b) != wantResolv {
			t.Errorf("resolv.conf:\n%s\nwant:\n%s", b, wantResolv)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWUTS); err != nil {
			r.err1 = fmt.Errorf("unshare UTS: %w", err)
			return
		}
		r.hostBefore, _ = utsHostname()
		r.a1, r.err1 = applyTable(t, ipv4Table(), o)
		if r.err1 != nil {
			return
		}
		r.hostSet, _ = utsHostname()
		r.a2, r.err2 = applyTable(t, ipv4Table(), o)
		// Check the network from this goroutine too, before undoing.
		r.afterApply()
		r.undoErr = r.a1.Undo()
		if r.a2 != nil {
			r.a2.Close()
		}
		r.hostAfter, _ = utsHostname()
	}()
	<-done
	if r.err1 != nil {
		t.Fatalf("Apply: %v", r.err1)
	}
	t.Logf("changes: %q", r.a1.Changes)
	if r.a1.Link != bootLink || r.a1.Parent != bootLink {
		t.Errorf("Applied link %q parent %q, want %s", r.a1.Link, r.a1.Parent, bootLink)
	}
	for _, want := range []string{"set eth-boot up", "added 192.168.50.10/24 to eth-boot", "added route default via 192.168.50.1 dev eth-boot",
		"added route 10.99.0.5/32 via 192.168.50.1 dev eth-boot", "added route 192.168.50.1/32 dev eth-boot",
		"wrote the DNS servers to " + o.ResolvConf, `set the hostname to "isb-nc-booted" (was "` + r.hostBefore + `")`} {
		if !slices.Contains(r.a1.Changes, want) {
			t.Errorf("changes lack %q: %q", want, r.a1.Changes)
		}
	}
	if r.hostSet != "isb-nc-booted" {
		t.Errorf("hostname after Apply = %q, want isb-nc-booted", r.hostSet)
	}
	if r.err2 != nil || len(r.a2.Changes) != 0 {
		t.Errorf("second Apply: err %v, changes %q; want none (idempotent)", r.err2, r.a2.Changes)
	}
	if r.undoErr != nil {
		t.Errorf("Undo: %v", r.undoErr)
	}
	if r.hostAfter != r.hostBefore {
		t.Errorf("hostname after Undo = %q, want %q", r.hostAfter, r.hostBefore)
	}
	if h, _ := utsHostname(); h == "isb-nc-booted" {
		t.Errorf("the test's own UTS namespace got the hostname")
	}

	// After Undo: our routes and address are gone, the unrelated ones are not.
	if got := tn.routes(t, unix.AF_INET); !slices.Equal(got, routesBefore) {
		t.Errorf("routes after Undo:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(routesBefore, "\n  "))
	}
	if got := tn.addrs(t, bootLink); len(got) != 0 {
		t.Errorf("addresses left on %s after Undo: %q", bootLink, got)
	}
	if got := tn.addrs(t, "lo"); !slices.Contains(got, "172.16.9.1/32") {
		t.Errorf("unrelated address on lo gone after Undo: %q", got)
	}
	if l, err := tn.hb.LinkByName(bootLink); err != nil || l.Attrs().Flags&net.FlagUp != 0 {
		t.Errorf("%s is up after Undo (err %v); it was down before", bootLink, err)
	}
	if b, _ := os.ReadFile(o.ResolvConf); string(b) != oldResolv {
		t.Errorf("resolv.conf after Undo:\n%s\nwant:\n%s", b, oldResolv)
	}
	if _, err := tn.dial(t, far); err == nil {
		t.Error("the far target is still reachable after Undo")
	}
}

// TestApplyIPv6 configures a global IPv6 address, waits for DAD and reaches a target
// behind the IPv6 gateway.
func TestApplyIPv6(t *testing.T) {
	tn := newTestNet(t)
	tn.peerAddr(t, peerLink, "2001:db8:5::1/64")
	tn.peerAddr(t, "lo", "2001:db8:99::5/128")
	far := tn.listen(t, "2001:db8:99::5")
	tb := &ibft.Table{
		NICs: []ibft.NIC{{
			Index: 0, Flags: ibft.FlagValid | ibft.FlagBootSelected | ibft.FlagNICGlobal,
			IP: netip.MustParseAddr("2001:db8:5::10"), Prefix: 64, Origin: ibft.OriginManual,
			Gateway: netip.MustParseAddr("2001:db8:5::1"), DNS: [2]netip.Addr{netip.MustParseAddr("2001:db8:5::53")},
			MAC: bootMAC,
		}},
		Targets: []ibft.Target{{Index: 0, Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("2001:db8:99::5"), Port: 3260, Name: "iqn.2025-01.test:v6"}},
	}
	o := tn.options(t)
	a, err := applyTable(t, tb, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("changes: %q", a.Changes)
	l, err := tn.hb.LinkByName(bootLink)
	must(t, err)
	as, err := tn.hb.AddrList(l, unix.AF_INET6)
	must(t, err)
	found := false
	for _, x := range as {
		if x.IP.String() == "2001:db8:5::10" {
			found = true
			if x.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 || x.Scope != unix.RT_SCOPE_UNIVERSE {
				t.Errorf("address flags %#x scope %d after Apply: want DAD done, global scope", x.Flags, x.Scope)
			}
		}
	}
	if !found {
		t.Fatalf("2001:db8:5::10 not on %s: %v", bootLink, as)
	}
	if src, err := tn.dial(t, far); err != nil || src != "2001:db8:5::10" {
		t.Errorf("connect to %s: peer saw source %q, err %v", far, src, err)
	}
	routes := tn.routes(t, unix.AF_INET6)
	for _, want := range []string{"default via 2001:db8:5::1 dev eth-boot src 2001:db8:5::10", "2001:db8:99::5/128 via 2001:db8:5::1 dev eth-boot src 2001:db8:5::10"} {
		if !slices.Contains(routes, want) {
			t.Errorf("routes lack %q:\n  %s", want, strings.Join(routes, "\n  "))
		}
	}
	a2, err := applyTable(t, tb, o)
	if err != nil || len(a2.Changes) != 0 {
		t.Errorf("second Apply: err %v, changes %v; want none", err, a2)
	}
	a2.Close()
	must(t, a.Undo())
	if got := tn.addrs(t, bootLink); len(got) != 0 {
		t.Errorf("addresses left after Undo: %q", got)
	}
	if _, err := os.Stat(o.ResolvConf); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("resolv.conf did not exist before; after Undo: %v", err)
	}
}

// TestApplyIPv6LinkLocal: with the NIC "global" flag clear the address gets link
// scope, and a link-local target is reached on-link.
func TestApplyIPv6LinkLocal(t *testing.T) {
	tn := newTestNet(t)
	tn.peerAddr(t, peerLink, "fe80::1/64")
	var l net.Listener
	var err error
	inNS(t, tn.peer, func() { l, err = net.Listen("tcp", "[fe80::1%"+peerLink+"]:0") })
	must(t, err)
	answerEach(t, l, func(c net.Conn) string { return c.RemoteAddr().(*net.TCPAddr).IP.String() })
	_, port, _ := net.SplitHostPort(l.Addr().String())
	tb := &ibft.Table{
		NICs:    []ibft.NIC{{Index: 0, Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("fe80::10"), Prefix: 64, MAC: bootMAC}},
		Targets: []ibft.Target{{Index: 0, Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("fe80::1"), Port: 3260, Name: "iqn.x:ll"}},
	}
	a, err := applyTable(t, tb, tn.options(t))
	must(t, err)
	defer a.Undo()
	link, err := tn.hb.LinkByName(bootLink)
	must(t, err)
	as, err := tn.hb.AddrList(link, unix.AF_INET6)
	must(t, err)
	if !slices.ContainsFunc(as, func(x netlink.Addr) bool { return x.IP.String() == "fe80::10" && x.Scope == unix.RT_SCOPE_LINK }) {
		t.Errorf("no link-scope fe80::10 on %s: %v", bootLink, as)
	}
	if src, err := tn.dial(t, "[fe80::1%"+bootLink+"]:"+port); err != nil || src != "fe80::10" {
		t.Errorf("connect to fe80::1: source %q, err %v", src, err)
	}
}

// TestApplyVLAN tags the boot traffic with VLAN 5: the peer only answers on its own
// VLAN 5 interface, so a connection proves the tag.
func TestApplyVLAN(t *testing.T) {
	tn := newTestNet(t)
	pv := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: "peer.5", ParentIndex: tn.peerLink(t).Attrs().Index}, VlanId: 5}
	if err := tn.hp.LinkAdd(pv); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
			t.Skipf("this kernel cannot create VLAN links (CONFIG_VLAN_8021Q): %v", err)
		}
		t.Fatal(err)
	}
	must(t, tn.hp.LinkSetUp(pv))
	tn.peerAddr(t, "peer.5", "192.168.55.1/24")
	near := tn.listen(t, "192.168.55.1")
	tb := ipv4Table()
	n := &tb.NICs[0]
	n.IP, n.Gateway, n.VLAN, n.Hostname = netip.MustParseAddr("192.168.55.10"), netip.Addr{}, 5, ""
	n.DNS = [2]netip.Addr{}
	tb.Targets = []ibft.Target{{Index: 0, Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("192.168.55.1"), Port: 3260, Name: "iqn.x:vlan"}}
	a, err := applyTable(t, tb, tn.options(t))
	if err != nil {
		t.Fatal(err)
	}
	if a.Link != "eth-boot.5" || a.Parent != bootLink {
		t.Errorf("Applied link %q on %q, want eth-boot.5 on %s", a.Link, a.Parent, bootLink)
	}
	if src, err := tn.dial(t, near); err != nil || src != "192.168.55.10" {
		t.Errorf("connect over VLAN 5: source %q, err %v", src, err)
	}
	again, err := applyTable(t, tb, tn.options(t))
	if err != nil || len(again.Changes) != 0 || again.Link != "eth-boot.5" {
		t.Errorf("second Apply: err %v, link %q, changes %q; want eth-boot.5 reused, no changes", err, again.Link, again.Changes)
	}
	again.Close()
	must(t, a.Undo())
	if _, err := tn.hb.LinkByName("eth-boot.5"); err == nil {
		t.Error("eth-boot.5 still exists after Undo")
	}
}

// TestApplyDHCPOrigin applies a DHCP-origin NIC (with the dhcp field iPXE fills in) as a
// static lease, with someone else's default route already present: that route is kept
// and the boot target is still reached through the iBFT gateway by its host route.
func TestApplyDHCPOrigin(t *testing.T) {
	tn := newTestNet(t)
	tn.peerAddr(t, peerLink, "192.168.50.1/24")
	tn.peerAddr(t, "lo", "10.99.0.5/32")
	far := tn.listen(t, "10.99.0.5")

	// Another interface in the boot namespace with its own default route.
	must(t, tn.hb.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth-other"}, PeerName: "eth-other-p"}))
	for _, name := range []string{"eth-other", "eth-other-p"} {
		l, err := tn.hb.LinkByName(name)
		must(t, err)
		must(t, tn.hb.LinkSetUp(l))
	}
	other, err := tn.hb.LinkByName("eth-other")
	must(t, err)
	must(t, tn.hb.AddrAdd(other, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("203.0.113.2/24"))}))
	must(t, tn.hb.RouteAdd(&netlink.Route{LinkIndex: other.Attrs().Index, Gw: net.ParseIP("203.0.113.1")}))

	tb := ipv4Table()
	tb.NICs[0].Origin = ibft.OriginDHCP
	tb.NICs[0].Hostname = ""
	o := tn.options(t)
	a, err := applyTable(t, tb, o)
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(a.Changes, func(c string) bool { return strings.Contains(c, "default") }) {
		t.Errorf("a default route was added next to the existing one: %q", a.Changes)
	}
	routes := tn.routes(t, unix.AF_INET)
	if !slices.Contains(routes, "default via 203.0.113.1 dev eth-other") {
		t.Errorf("the existing default route is gone:\n  %s", strings.Join(routes, "\n  "))
	}
	if src, err := tn.dial(t, far); err != nil || src != "192.168.50.10" {
		t.Errorf("connect to the target past a foreign default route: source %q, err %v", src, err)
	}
	must(t, a.Undo())
	if routes := tn.routes(t, unix.AF_INET); !slices.Contains(routes, "default via 203.0.113.1 dev eth-other") {
		t.Errorf("Undo removed the foreign default route:\n  %s", strings.Join(routes, "\n  "))
	}
}

// TestApplyMissingMAC asks for a MAC no link has: one error naming it and the MACs
// that exist, and nothing changed.
func TestApplyMissingMAC(t *testing.T) {
	tn := newTestNet(t)
	tb := ipv4Table()
	tb.NICs[0].MAC = mac("02:1b:00:00:00:99")
	_, err := applyTable(t, tb, tn.options(t))
	if err == nil {
		t.Fatal("Apply succeeded without a link")
	}
	msg := err.Error()
	t.Logf("error: %s", msg)
	for _, want := range []string{"no link has MAC 02:1b:00:00:00:99", "PCI 00:03.0", "links present: eth-boot 02:1b:00:00:00:10"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q", want)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("error spans lines")
	}
	if l, _ := tn.hb.LinkByName(bootLink); l.Attrs().Flags&net.FlagUp != 0 {
		t.Error("the unrelated link was brought up")
	}
}

// TestApplyNoCarrier: the peer end is down, so the carrier wait gives up at its bound
// and Apply undoes what it had done.
func TestApplyNoCarrier(t *testing.T) {
	tn := newTestNet(t)
	must(t, tn.hp.LinkSetDown(tn.peerLink(t)))
	o := tn.options(t)
	o.CarrierTimeout = time.Second
	start := time.Now()
	_, err := applyTable(t, ipv4Table(), o)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "waiting for carrier") {
		t.Fatalf("err = %v, want a carrier timeout", err)
	}
	if took > 3*time.Second {
		t.Errorf("Apply took %v with a 1s carrier bound", took)
	}
	if l, _ := tn.hb.LinkByName(bootLink); l.Attrs().Flags&net.FlagUp != 0 {
		t.Error("the link was left up after the failed Apply")
	}
}

// TestApplyLoadsDriverAndWaitsForLink: the link is missing, so Apply resolves the
// driver from the PCI device's modalias and loads it; the "driver" (a test loader)
// creates the link a moment later, which Apply must notice from netlink events.
func TestApplyLoadsDriverAndWaitsForLink(t *testing.T) {
	tn := newTestNet(t)
	l, err := tn.hb.LinkByName(bootLink)
	must(t, err)
	must(t, tn.hb.LinkDel(l)) // takes the peer end with it
	any := tn.listen(t, "0.0.0.0")
	_, port, _ := net.SplitHostPort(any)

	o := tn.options(t)
	withE1000Device(t, &o)
	var loaded []string
	driverErr := make(chan error, 1)
	o.LoadModule = func(m string) error {
		loaded = append(loaded, m)
		go func() {
			time.Sleep(300 * time.Millisecond)
			driverErr <- func() error {
				veth := &netlink.Veth{
					LinkAttrs: netlink.LinkAttrs{Name: bootLink, HardwareAddr: bootMAC},
					PeerName:  peerLink, PeerNamespace: netlink.NsFd(tn.peer),
				}
				if err := tn.hb.LinkAdd(veth); err != nil {
					return err
				}
				p, err := tn.hp.LinkByName(peerLink)
				if err != nil {
					return err
				}
				if err := tn.hp.AddrAdd(p, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("192.168.50.1/24")), Flags: unix.IFA_F_NODAD}); err != nil {
					return err
				}
				return tn.hp.LinkSetUp(p)
			}()
		}()
		return nil
	}
	tb := ipv4Table()
	tb.NICs[0].Hostname, tb.NICs[0].Gateway = "", netip.Addr{}
	a, err := applyTable(t, tb, o)
	if derr := <-driverErr; derr != nil {
		t.Fatalf("test driver: %v", derr)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer a.Undo()
	if !slices.Equal(loaded, []string{"e1000"}) || !slices.Equal(a.Modules, loaded) {
		t.Errorf("loaded %q, Applied.Modules %q; want [e1000]", loaded, a.Modules)
	}
	if !slices.Contains(a.Changes, "loaded module e1000") {
		t.Errorf("changes lack the module: %q", a.Changes)
	}
	if src, err := tn.dial(t, net.JoinHostPort("192.168.50.1", port)); err != nil || src != "192.168.50.10" {
		t.Errorf("connect: source %q, err %v", src, err)
	}
}

// withE1000Device gives o a sysfs with an e1000 at 00:03.0 and a modules.alias that
// resolves it.
func withE1000Device(t *testing.T, o *Options) {
	// Laid out as sysfs is: bus/pci/devices holds symlinks into devices/.
	writeFile(t, filepath.Join(o.Sysfs, "devices/pci0000:00/0000:00:03.0/modalias"), e1000Modalias+"\n")
	must(t, os.MkdirAll(filepath.Join(o.Sysfs, "bus/pci/devices"), 0o755))
	must(t, os.Symlink("../../../devices/pci0000:00/0000:00:03.0", filepath.Join(o.Sysfs, "bus/pci/devices/0000:00:03.0")))
	o.ModulesRoot, o.KernelVersion = t.TempDir(), "test"
	writeFile(t, filepath.Join(o.ModulesRoot, "lib/modules/test/modules.alias"),
		"alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\n")
}

// TestApplyDriverLoadsButNoLink: the driver loads but no link with the MAC shows up;
// the wait ends at its bound with an error that says so and lists the links.
func TestApplyDriverLoadsButNoLink(t *testing.T) {
	tn := newTestNet(t)
	o := tn.options(t)
	withE1000Device(t, &o)
	o.LoadModule = func(string) error { return nil }
	o.LinkTimeout = 500 * time.Millisecond
	tb := ipv4Table()
	tb.NICs[0].MAC = mac("02:1b:00:00:00:99")
	start := time.Now()
	_, err := applyTable(t, tb, o)
	if err == nil {
		t.Fatal("Apply succeeded without the link")
	}
	if took := time.Since(start); took < 500*time.Millisecond || took > 2*time.Second {
		t.Errorf("gave up after %v, want the 500ms bound", took)
	}
	for _, want := range []string{"loaded e1000, but no such link appeared: gave up after 500ms", "links present: eth-boot 02:1b:00:00:00:10"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// TestApplyWarnsOnPCIMismatch: the link with the MAC sits at another PCI address than
// the iBFT says; the MAC wins and a warning says so.
func TestApplyWarnsOnPCIMismatch(t *testing.T) {
	tn := newTestNet(t)
	o := tn.options(t)
	dev := filepath.Join(o.Sysfs, "devices/pci0000:00/0000:00:04.0")
	writeFile(t, filepath.Join(dev, "net", bootLink, "address"), bootMAC.String()+"\n")
	must(t, os.Symlink("../..", filepath.Join(dev, "net", bootLink, "device")))
	must(t, os.MkdirAll(filepath.Join(o.Sysfs, "class/net"), 0o755))
	must(t, os.Symlink("../../devices/pci0000:00/0000:00:04.0/net/"+bootLink, filepath.Join(o.Sysfs, "class/net", bootLink)))
	var logs []string
	o.Logf = func(format string, args ...any) { logs = append(logs, fmt.Sprintf(format, args...)) }
	tb := ipv4Table()
	tb.NICs[0].Hostname = ""
	a, err := applyTable(t, tb, o)
	must(t, err)
	defer a.Undo()
	want := "netcfg: warning: eth-boot (MAC 02:1b:00:00:00:10) is PCI 0000:00:04.0, the iBFT says 00:03.0; using the MAC"
	if !slices.Contains(logs, want) {
		t.Errorf("logs lack %q:\n%s", want, strings.Join(logs, "\n"))
	}
}

// TestApplyIPv6AheadOfAdvertisedRoute: the kernel learns a default route from a router
// advertisement as soon as the link is up, before the iBFT's gateway is installed. The
// iBFT's route goes in one metric ahead of it; the advertised one stays, and Undo
// leaves it alone.
func TestApplyIPv6AheadOfAdvertisedRoute(t *testing.T) {
	tn := newTestNet(t)
	tn.peerAddr(t, peerLink, "2001:db8:5::1/64")
	boot, err := tn.hb.LinkByName(bootLink)
	must(t, err)
	must(t, tn.hb.LinkSetUp(boot))
	ra := &netlink.Route{LinkIndex: boot.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("::/0")),
		Gw: net.ParseIP("fe80::1"), Protocol: unix.RTPROT_RA, Priority: 1024, Table: unix.RT_TABLE_MAIN}
	must(t, tn.hb.RouteAdd(ra))
	tb := &ibft.Table{
		NICs: []ibft.NIC{{
			Index: 0, Flags: ibft.FlagValid | ibft.FlagBootSelected | ibft.FlagNICGlobal,
			IP: netip.MustParseAddr("2001:db8:5::10"), Prefix: 64, Origin: ibft.OriginManual,
			Gateway: netip.MustParseAddr("2001:db8:5::1"), MAC: bootMAC,
		}},
		Targets: []ibft.Target{{Index: 0, Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("2001:db8:5::1"), Port: 3260, Name: "iqn.2025-01.test:v6"}},
	}
	o := tn.options(t)
	a, err := applyTable(t, tb, o)
	must(t, err)
	metrics := func() map[string]int {
		rs, err := tn.hb.RouteListFiltered(unix.AF_INET6, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		must(t, err)
		m := map[string]int{}
		for _, r := range rs {
			if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw != nil {
				m[r.Gw.String()] = r.Priority
			}
		}
		return m
	}
	if got := metrics(); got["2001:db8:5::1"] != 1023 || got["fe80::1"] != 1024 {
		t.Errorf("default routes by gateway and metric: %v; want 2001:db8:5::1 at 1023 ahead of the advertised fe80::1 at 1024", got)
	}
	a2, err := applyTable(t, tb, o)
	if err != nil || len(a2.Changes) != 0 {
		t.Errorf("second Apply: err %v, changes %v; want none", err, a2)
	}
	a2.Close()
	must(t, a.Undo())
	if got := metrics(); len(got) != 1 || got["fe80::1"] != 1024 {
		t.Errorf("default routes after Undo: %v; want only the advertised one", got)
	}
}

// TestApplyAwaitsSLAAC: old iPXE records an IPv6 boot with only the NIC's IPv4
// address, so the IPv6 target (here from netroot=) has no address of its family to be
// reached from. Apply waits until an IPv6 address of more than link scope is usable on
// the link (here added by the test, with DAD, as SLAAC would) instead of letting the
// login race it; without one it gives up after the timeout without failing.
func TestApplyAwaitsSLAAC(t *testing.T) {
	tn := newTestNet(t)
	tb := ipv4Table()
	tb.NICs[0].Hostname = ""
	p, err := NewPlan(tb, 0, Overrides{Targets: []netip.Addr{netip.MustParseAddr("2001:db8:99::5")}})
	must(t, err)
	if !p.AwaitSLAAC || !strings.Contains(p.String(), "router advertisements (SLAAC)") {
		t.Fatalf("plan does not wait for SLAAC:\n%s", p)
	}
	o := tn.options(t)
	o.SLAACTimeout = 8 * time.Second
	boot, err := tn.hb.LinkByName(bootLink)
	must(t, err)
	go func() {
		time.Sleep(500 * time.Millisecond)
		tn.hb.AddrAdd(boot, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("2001:db8:5::20/64"))})
	}()
	t0 := time.Now()
	a, err := Apply(context.Background(), p, o)
	took := time.Since(t0)
	must(t, err)
	defer a.Undo()
	as, err := tn.hb.AddrList(boot, unix.AF_INET6)
	must(t, err)
	if !slices.ContainsFunc(as, func(x netlink.Addr) bool {
		return x.IP.String() == "2001:db8:5::20" && x.Flags&unix.IFA_F_TENTATIVE == 0
	}) {
		t.Errorf("Apply returned after %v before the IPv6 address was usable: %v", took, as)
	}
	if took > o.SLAACTimeout {
		t.Errorf("Apply took %v, beyond the SLAAC timeout", took)
	}
	t.Logf("Apply returned %v after start, with 2001:db8:5::20 usable", took.Round(time.Millisecond))

	tn2 := newTestNet(t)
	o2 := tn2.options(t)
	o2.SLAACTimeout = time.Second
	t0 = time.Now()
	a2, err := Apply(context.Background(), p, o2)
	if err != nil {
		t.Fatalf("no router advertisement must not fail the network: %v", err)
	}
	a2.Undo()
	if took := time.Since(t0); took < time.Second {
		t.Errorf("Apply returned after %v without an IPv6 address; want the 1 s wait", took)
	}
}
