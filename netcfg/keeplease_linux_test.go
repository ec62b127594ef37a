package netcfg

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/dhcpv6/server6"
	"github.com/isboot/isboot/ibft"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// leaseServer4 leases addr for lease on the peer end, counting each kind of message:
// DISCOVER, REQUEST while selecting, and REQUEST with ciaddr (renewing or rebinding).
type leaseServer4 struct {
	discovers, selects, renewals atomic.Int32
	srv                          *server4.Server
}

func (tn *testNet) leaseServer4(t *testing.T, serverIP, addr string, lease time.Duration) *leaseServer4 {
	t.Helper()
	ls := &leaseServer4{}
	handler := func(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
		typ := dhcpv4.MessageTypeOffer
		switch {
		case m.MessageType() == dhcpv4.MessageTypeDiscover:
			ls.discovers.Add(1)
		case m.MessageType() == dhcpv4.MessageTypeRequest && !m.ClientIPAddr.IsUnspecified():
			ls.renewals.Add(1)
			typ = dhcpv4.MessageTypeAck
		case m.MessageType() == dhcpv4.MessageTypeRequest:
			ls.selects.Add(1)
			typ = dhcpv4.MessageTypeAck
		default:
			return
		}
		reply, err := dhcpv4.NewReplyFromRequest(m,
			dhcpv4.WithMessageType(typ),
			dhcpv4.WithYourIP(net.ParseIP(addr)),
			dhcpv4.WithServerIP(net.ParseIP(serverIP)),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP(serverIP))),
			dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
			dhcpv4.WithRouter(net.ParseIP(serverIP)),
			dhcpv4.WithDNS(net.ParseIP("192.168.60.53")),
			dhcpv4.WithLeaseTime(uint32(lease/time.Second)),
		)
		if err != nil {
			t.Errorf("dhcp server: %v", err)
			return
		}
		// A renewing client has its address: answer it there, as a server does.
		dst := peer
		if !m.ClientIPAddr.IsUnspecified() {
			dst = &net.UDPAddr{IP: m.ClientIPAddr, Port: dhcpv4.ClientPort}
		}
		if _, err := conn.WriteTo(reply.ToBytes(), dst); err != nil {
			t.Logf("dhcp server: send: %v", err)
		}
	}
	var err error
	inNS(t, tn.peer, func() {
		ls.srv, err = server4.NewServer(peerLink, &net.UDPAddr{IP: net.IPv4zero, Port: dhcpv4.ServerPort}, handler)
	})
	must(t, err)
	go ls.srv.Serve()
	t.Cleanup(func() { ls.srv.Close() })
	return ls
}

// states collects what KeepLease reports.
type states struct {
	mu  sync.Mutex
	all []LeaseState
}

func (s *states) add(st LeaseState) { s.mu.Lock(); s.all = append(s.all, st); s.mu.Unlock() }
func (s *states) last() LeaseState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.all[len(s.all)-1]
}
func (s *states) seen(state string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.ContainsFunc(s.all, func(st LeaseState) bool { return st.State == state })
}

// TestDHCPv4LeaseKept: ip=dhcp without an iBFT gets a lease from a real DHCP server
// (address, default route, host route to the target, DNS), and KeepLease renews the
// 4 s lease at T1 again and again. With the server gone the renewals fail, the lease
// runs out, and the address stays.
func TestDHCPv4LeaseKept(t *testing.T) {
	tn := newTestNet(t)
	tn.peerAddr(t, peerLink, "192.168.60.1/24")
	srv := tn.leaseServer4(t, "192.168.60.1", "192.168.60.10", 4*time.Second)
	p, err := NewManualPlan(Manual{Iface: bootLink, Mode: ModeDHCP4, Targets: []netip.Addr{netip.MustParseAddr("198.51.100.7")}})
	must(t, err)
	o := tn.options(t)
	start := time.Now()
	a, err := Apply(t.Context(), p, o)
	must(t, err)
	defer a.Undo()
	t.Logf("lease in %v: %v; changes %q", time.Since(start).Round(time.Millisecond), a.Lease, a.Changes)
	if a.Lease == nil || a.Lease.Addr.String() != "192.168.60.10/24" || a.Lease.Server.String() != "192.168.60.1" ||
		a.Lease.Duration != 4*time.Second || a.Lease.T1 != 2*time.Second || a.Lease.T2 != 3500*time.Millisecond {
		t.Fatalf("lease %+v", a.Lease)
	}
	if got := tn.addrs(t, bootLink); !slices.Equal(got, []string{"192.168.60.10/24"}) {
		t.Errorf("addresses %q", got)
	}
	routes := tn.routes(t, 2)
	for _, want := range []string{"default via 192.168.60.1 dev eth-boot src 192.168.60.10", "198.51.100.7/32 via 192.168.60.1 dev eth-boot src 192.168.60.10"} {
		if !slices.Contains(routes, want) {
			t.Errorf("no route %q in\n  %s", want, strings.Join(routes, "\n  "))
		}
	}
	if b, _ := os.ReadFile(o.ResolvConf); !strings.Contains(string(b), "nameserver 192.168.60.53") {
		t.Errorf("resolv.conf:\n%s", b)
	}
	if srv.discovers.Load() < 1 || srv.selects.Load() != 1 {
		t.Errorf("server saw %d DISCOVER, %d REQUEST", srv.discovers.Load(), srv.selects.Load())
	}

	ns := tn.boot
	var got states
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		KeepLease(ctx, *a.Lease, KeepOptions{Namespace: &ns, Logf: t.Logf, Report: got.add})
	}()
	defer func() { cancel(); <-done }()
	// T1 is 2 s: renewals at about 2, 4, 6 and 8 s.
	time.Sleep(9 * time.Second)
	st := got.last()
	if st.Renewals < 3 || srv.renewals.Load() < 3 || st.State != "bound" || st.Failures != 0 {
		t.Fatalf("after 9 s: %d renewals acknowledged, %d seen by the server, state %s, %d failures (%s)",
			st.Renewals, srv.renewals.Load(), st.State, st.Failures, st.LastError)
	}
	t.Logf("after 9 s: %d renewals, lease now ends %s", st.Renewals, st.Lease.Expires().Format(time.StampMilli))
	if !st.Lease.Expires().After(start.Add(9 * time.Second)) {
		t.Errorf("the renewed lease ends %v, before now", st.Lease.Expires())
	}

	srv.srv.Close() // the server goes away: renew, rebind, expire
	time.Sleep(6 * time.Second)
	st = got.last()
	if !got.seen("renewing") || !got.seen("rebinding") || st.State != "expired" || st.Failures < 3 {
		t.Errorf("without a server: state %s, %d failures, saw renewing %v, rebinding %v", st.State, st.Failures, got.seen("renewing"), got.seen("rebinding"))
	}
	if got := tn.addrs(t, bootLink); !slices.Equal(got, []string{"192.168.60.10/24"}) {
		t.Errorf("addresses after the lease ran out: %q, want the leased one kept", got)
	}
	t.Logf("without a server: %d failed attempts, last: %s", st.Failures, st.LastError)
}

// TestDHCPv4NoServer: ip=dhcp with nobody answering fails within its bound, naming
// the link.
func TestDHCPv4NoServer(t *testing.T) {
	tn := newTestNet(t)
	p, err := NewManualPlan(Manual{Iface: bootLink, Mode: ModeDHCP4})
	must(t, err)
	o := tn.options(t)
	o.DHCPTimeout = 2 * time.Second
	start := time.Now()
	_, err = Apply(t.Context(), p, o)
	if err == nil || !strings.Contains(err.Error(), "no DHCP lease on eth-boot") {
		t.Fatalf("err %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %v with a 2 s bound", took)
	}
	if got := tn.addrs(t, bootLink); len(got) != 0 {
		t.Errorf("addresses %q after a failed DHCP", got)
	}
}

// TestDHCPv6LeaseKept: ip=dhcp6 gets an IA_NA address from a real DHCPv6 server and
// KeepLease renews it (Renew to the server at T1).
func TestDHCPv6LeaseKept(t *testing.T) {
	tn := newTestNet(t)
	leased := net.ParseIP("fd00:60::10")
	serverDUID := &dhcpv6.DUIDLL{HWType: 1, LinkLayerAddr: peerMAC}
	var solicits, requests, renews atomic.Int32
	handler := func(conn net.PacketConn, peer net.Addr, d dhcpv6.DHCPv6) {
		m, err := d.GetInnerMessage()
		if err != nil {
			return
		}
		var rep *dhcpv6.Message
		switch m.MessageType {
		case dhcpv6.MessageTypeSolicit:
			solicits.Add(1)
			rep, err = dhcpv6.NewAdvertiseFromSolicit(m)
		case dhcpv6.MessageTypeRequest:
			requests.Add(1)
			rep, err = dhcpv6.NewReplyFromMessage(m)
		case dhcpv6.MessageTypeRenew, dhcpv6.MessageTypeRebind:
			renews.Add(1)
			rep, err = dhcpv6.NewReplyFromMessage(m)
		default:
			return
		}
		if err != nil {
			t.Errorf("dhcpv6 server: %v", err)
			return
		}
		var iaid [4]byte
		if ia := m.Options.OneIANA(); ia != nil {
			iaid = ia.IaId
		}
		rep.AddOption(dhcpv6.OptServerID(serverDUID))
		rep.AddOption(&dhcpv6.OptIANA{IaId: iaid, T1: 2 * time.Second, T2: 3 * time.Second, Options: dhcpv6.IdentityOptions{Options: []dhcpv6.Option{
			&dhcpv6.OptIAAddress{IPv6Addr: leased, PreferredLifetime: 4 * time.Second, ValidLifetime: 4 * time.Second},
		}}})
		rep.AddOption(dhcpv6.OptDNS(net.ParseIP("fd00:60::53")))
		if _, err := conn.WriteTo(rep.ToBytes(), peer); err != nil {
			t.Logf("dhcpv6 server: send: %v", err)
		}
	}
	var srv *server6.Server
	var err error
	inNS(t, tn.peer, func() {
		srv, err = server6.NewServer(peerLink, nil, handler)
	})
	must(t, err)
	go srv.Serve()
	t.Cleanup(func() { srv.Close() })

	p, err := NewManualPlan(Manual{Iface: bootLink, Mode: ModeDHCP6})
	must(t, err)
	o := tn.options(t)
	a, err := Apply(t.Context(), p, o)
	must(t, err)
	defer a.Undo()
	if a.Lease == nil || a.Lease.Family != 6 || a.Lease.Addr.String() != "fd00:60::10/128" || a.Lease.ServerID == "" {
		t.Fatalf("lease %+v", a.Lease)
	}
	if got := tn.addrs(t, bootLink); !slices.Equal(got, []string{"fd00:60::10/128"}) {
		t.Errorf("addresses %q", got)
	}
	ns := tn.boot
	var got states
	ctx, cancel := context.WithTimeout(t.Context(), 7*time.Second)
	defer cancel()
	KeepLease(ctx, *a.Lease, KeepOptions{Namespace: &ns, Logf: t.Logf, Report: got.add})
	st := got.last()
	if st.Renewals < 2 || renews.Load() < 2 || st.Failures != 0 {
		t.Errorf("after 7 s: %d renewals, %d Renew/Rebind at the server, %d failures (%s)", st.Renewals, renews.Load(), st.Failures, st.LastError)
	}
	t.Logf("DHCPv6: %d Solicit, %d Request, %d Renew; %d renewals acknowledged", solicits.Load(), requests.Load(), renews.Load(), st.Renewals)
}

// TestKeepLeaseFromEmptyRoot: the daemon renews after switch_root from a root of its
// own that holds nothing. A child process chroots into an empty directory and runs
// KeepLease there (the namespace is entered through a handle opened before): the
// renewals need no file at all.
func TestKeepLeaseFromEmptyRoot(t *testing.T) {
	tn := newTestNet(t)
	tn.peerAddr(t, peerLink, "192.168.60.1/24")
	srv := tn.leaseServer4(t, "192.168.60.1", "192.168.60.10", 2*time.Second)
	p, err := NewManualPlan(Manual{Iface: bootLink, Mode: ModeDHCP4})
	must(t, err)
	a, err := Apply(t.Context(), p, tn.options(t))
	must(t, err)
	defer a.Undo()
	lease, err := json.Marshal(a.Lease)
	must(t, err)
	nsFile, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", int(tn.boot)))
	must(t, err)
	defer nsFile.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKeepLeaseChild$", "-test.v")
	cmd.Env = append(os.Environ(), "ISB_KEEPLEASE="+string(lease), "ISB_KEEPLEASE_ROOT="+t.TempDir())
	cmd.ExtraFiles = []*os.File{nsFile} // fd 3 in the child
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	n := strings.Count(string(out), "KEEPLEASE-RENEWED")
	t.Logf("child in an empty root: %d renewals in %v, server saw %d", n, time.Since(start).Round(time.Millisecond), srv.renewals.Load())
	if n < 3 || srv.renewals.Load() < 3 || strings.Contains(string(out), "warning") {
		t.Errorf("child output:\n%s", out)
	}
}

// TestKeepLeaseChild is the child of TestKeepLeaseFromEmptyRoot.
func TestKeepLeaseChild(t *testing.T) {
	raw := os.Getenv("ISB_KEEPLEASE")
	if raw == "" {
		t.Skip("runs only as TestKeepLeaseFromEmptyRoot's child process")
	}
	var l Lease
	must(t, json.Unmarshal([]byte(raw), &l))
	ns := netns.NsHandle(3)
	must(t, unix.Chroot(os.Getenv("ISB_KEEPLEASE_ROOT")))
	must(t, unix.Chdir("/"))
	if ents, err := os.ReadDir("/"); err != nil || len(ents) != 0 {
		t.Fatalf("the root is not empty: %v %v", ents, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4500*time.Millisecond)
	defer cancel()
	KeepLease(ctx, l, KeepOptions{Namespace: &ns, Logf: t.Logf, Report: func(st LeaseState) {
		if st.Renewals > 0 && st.State == "bound" {
			fmt.Printf("KEEPLEASE-RENEWED %d\n", st.Renewals)
		}
	}})
}

// TestIBFTLeaseConfirmedLater: an iBFT address whose origin is DHCP is applied
// without a DHCP exchange (the boot does not wait for one); KeepLease confirms it
// after ConfirmAfter, asking for that address, and then renews it at T1.
func TestIBFTLeaseConfirmedLater(t *testing.T) {
	tn := newTestNet(t)
	tn.peerAddr(t, peerLink, "192.168.61.1/24")
	srv := tn.leaseServer4(t, "192.168.61.1", "192.168.61.10", 4*time.Second)
	tb := ipv4Table()
	tb.NICs[0].Origin, tb.NICs[0].Hostname = ibft.OriginDHCP, ""
	tb.NICs[0].IP, tb.NICs[0].Gateway, tb.NICs[0].DHCP = netip.MustParseAddr("192.168.61.10"), netip.MustParseAddr("192.168.61.1"), netip.MustParseAddr("192.168.61.1")
	p, err := NewPlan(tb, 0, Overrides{})
	must(t, err)
	p.ConfirmLater = true
	a, err := Apply(t.Context(), p, tn.options(t))
	must(t, err)
	defer a.Undo()
	if a.Lease == nil || len(a.Lease.Reply) != 0 || a.Lease.Addr.Addr().String() != "192.168.61.10" {
		t.Fatalf("lease handed on: %+v", a.Lease)
	}
	if n := srv.selects.Load() + srv.renewals.Load() + srv.discovers.Load(); n != 0 {
		t.Fatalf("Apply sent %d DHCP messages; the boot must not wait for a server", n)
	}
	ns := tn.boot
	var got states
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		KeepLease(ctx, *a.Lease, KeepOptions{Namespace: &ns, Logf: t.Logf, Report: got.add, ConfirmAfter: 500 * time.Millisecond})
	}()
	defer func() { cancel(); <-done }()
	time.Sleep(5 * time.Second)
	st := got.last()
	if !got.seen("unconfirmed") || st.State != "bound" || st.Lease.Duration != 4*time.Second || st.Renewals < 1 || srv.selects.Load() != 1 {
		t.Fatalf("after 5 s: state %s, lease %v, %d renewals, server saw %d confirmations (%s)",
			st.State, st.Lease.Duration, st.Renewals, srv.selects.Load(), st.LastError)
	}
	t.Logf("confirmed, then %d renewals", st.Renewals)
}
