package netcfg

import (
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/isboot/isboot/ibft"
)

// dhcpServer serves DHCPv4 on the peer end, offering offer, and records the address
// each REQUEST asked for.
type dhcpServer struct {
	mu        sync.Mutex
	requested []string
}

func (tn *testNet) dhcpServer(t *testing.T, serverIP, offer string) *dhcpServer {
	t.Helper()
	d := &dhcpServer{}
	handler := func(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
		typ := dhcpv4.MessageTypeOffer
		if m.MessageType() == dhcpv4.MessageTypeRequest {
			typ = dhcpv4.MessageTypeAck
			d.mu.Lock()
			d.requested = append(d.requested, m.RequestedIPAddress().String()+" from "+m.ClientHWAddr.String())
			d.mu.Unlock()
		} else if m.MessageType() != dhcpv4.MessageTypeDiscover {
			return
		}
		reply, err := dhcpv4.NewReplyFromRequest(m,
			dhcpv4.WithMessageType(typ),
			dhcpv4.WithYourIP(net.ParseIP(offer)),
			dhcpv4.WithServerIP(net.ParseIP(serverIP)),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP(serverIP))),
			dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
			dhcpv4.WithLeaseTime(3600),
		)
		if err != nil {
			t.Errorf("dhcp server: %v", err)
			return
		}
		if _, err := conn.WriteTo(reply.ToBytes(), peer); err != nil {
			t.Errorf("dhcp server: send: %v", err)
		}
	}
	var srv *server4.Server
	var err error
	inNS(t, tn.peer, func() {
		srv, err = server4.NewServer(peerLink, &net.UDPAddr{IP: net.IPv4zero, Port: dhcpv4.ServerPort}, handler)
	})
	must(t, err)
	go srv.Serve()
	t.Cleanup(func() { srv.Close() })
	return d
}

func (d *dhcpServer) requests() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.requested)
}

// TestApplyDHCPRenew: with isboot.dhcp=1 the static lease from the iBFT is confirmed by
// a DHCP server, asking for the iBFT address.
func TestApplyDHCPRenew(t *testing.T) {
	tn := newTestNet(t)
	tn.peerAddr(t, peerLink, "192.168.50.1/24")
	srv := tn.dhcpServer(t, "192.168.50.1", "192.168.50.10")
	tb := ipv4Table()
	tb.NICs[0].Origin, tb.NICs[0].Hostname = ibft.OriginDHCP, ""
	p, err := NewPlan(tb, 0, Overrides{Renew: true})
	must(t, err)
	o := tn.options(t)
	a, err := Apply(t.Context(), p, o)
	must(t, err)
	defer a.Undo()
	t.Logf("changes: %q", a.Changes)
	if !slices.ContainsFunc(a.Changes, func(c string) bool {
		return strings.HasPrefix(c, "renewed the DHCP lease of 192.168.50.10 on eth-boot from 192.168.50.1 for 1h0m0s")
	}) {
		t.Errorf("no renewal among the changes: %q", a.Changes)
	}
	if got := srv.requests(); !slices.Equal(got, []string{"192.168.50.10 from " + bootMAC.String()}) {
		t.Errorf("server saw requests %q", got)
	}
}

// TestApplyDHCPRenewOtherAddress: a server that hands out another address does not
// move the boot NIC; and without any server the renewal gives up within its bound.
func TestApplyDHCPRenewOtherAddress(t *testing.T) {
	tn := newTestNet(t)
	tn.peerAddr(t, peerLink, "192.168.50.1/24")
	tn.dhcpServer(t, "192.168.50.1", "192.168.50.77")
	tb := ipv4Table()
	tb.NICs[0].Hostname = ""
	p, err := NewPlan(tb, 0, Overrides{Renew: true})
	must(t, err)
	a, err := Apply(t.Context(), p, tn.options(t))
	must(t, err)
	defer a.Undo()
	if slices.ContainsFunc(a.Changes, func(c string) bool { return strings.HasPrefix(c, "renewed") }) {
		t.Errorf("a different offer counted as a renewal: %q", a.Changes)
	}
	if got := tn.addrs(t, bootLink); !slices.Equal(got, []string{"192.168.50.10/24"}) {
		t.Errorf("addresses %q, want only the iBFT one", got)
	}
}

func TestApplyDHCPRenewNoServer(t *testing.T) {
	tn := newTestNet(t)
	tn.peerAddr(t, peerLink, "192.168.50.1/24")
	tb := ipv4Table()
	tb.NICs[0].Hostname = ""
	p, err := NewPlan(tb, 0, Overrides{Renew: true})
	must(t, err)
	o := tn.options(t)
	o.DHCPTimeout = 1500 * time.Millisecond
	start := time.Now()
	a, err := Apply(t.Context(), p, o)
	must(t, err)
	defer a.Undo()
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("Apply took %v with a 1.5s DHCP bound", took)
	}
	if got := tn.addrs(t, bootLink); !slices.Equal(got, []string{"192.168.50.10/24"}) {
		t.Errorf("addresses %q after a failed renewal", got)
	}
}
