package iscsi_test

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/bootplan"
	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/iscsi"
)

// The boot LUN goes from the iBFT to the wire unchanged: a table's 8-byte SAM LUN,
// encoded and parsed back (ibft), planned (bootplan, as PID 1 and serve --ibft do),
// and logged in to (iscsi) is the LUN field of every SCSI command the target gets.
// Single-level LUNs, flat space ones, a bus number, two levels, extended addressing.
func TestLUNFromIBFTToWire(t *testing.T) {
	target, luns := iscsi.StartLUNRecorder(t)
	host, portStr, _ := net.SplitHostPort(target)
	port, _ := strconv.Atoi(portStr)
	mac, _ := net.ParseMAC("52:54:00:12:34:56")
	for _, c := range []struct {
		name string
		raw  [8]byte
		lun  string // how logs and the status file name it
	}{
		{"LUN 0", [8]byte{}, "0"},
		{"LUN 1, peripheral", [8]byte{0x00, 0x01}, "1"},
		{"LUN 255, peripheral", [8]byte{0x00, 0xff}, "255"},
		{"LUN 300, flat space", [8]byte{0x41, 0x2c}, "300"},
		{"LUN 16383, flat space", [8]byte{0x7f, 0xff}, "16383"},
		{"LUN 5, flat space", [8]byte{0x40, 0x05}, "4005000000000000"},
		{"bus 1, LUN 5", [8]byte{0x01, 0x05}, "0105000000000000"},
		{"two levels: 1, then 2", [8]byte{0x00, 0x01, 0x00, 0x02}, "0001000200000000"},
		{"extended flat space", [8]byte{0xd2, 0x00, 0x12, 0x34}, "d200123400000000"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tb := &ibft.Table{
				Revision:  1,
				OEMID:     "ISBOOT",
				Initiator: ibft.Initiator{Flags: 3, Name: "iqn.2026-01.org.isboot.test:initiator"},
				NICs: []ibft.NIC{{Flags: 3, IP: netip.MustParseAddr("127.0.0.1"), Prefix: 8,
					Origin: ibft.OriginManual, MAC: mac}},
				Targets: []ibft.Target{{Flags: 3, IP: netip.MustParseAddr(host), Port: uint16(port),
					LUN: ibft.LUNNumber(c.raw), LUNRaw: c.raw, Name: "iqn.2026-01.org.isboot.test:hostile"}},
			}
			b, err := ibft.Encode(tb)
			if err != nil {
				t.Fatal(err)
			}
			parsed, err := ibft.Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if parsed.Targets[0].LUNRaw != c.raw {
				t.Fatalf("iBFT: lun_raw %x, want %x", parsed.Targets[0].LUNRaw, c.raw)
			}
			plan, err := bootplan.Make(&cmdline.CmdLine{}, parsed)
			if err != nil {
				t.Fatal(err)
			}
			cfg := plan.ISCSI
			if got := cfg.LUNString(); got != c.lun {
				t.Errorf("config names the LUN %q, want %q", got, c.lun)
			}
			cfg.LoginTimeout = 5 * time.Second
			cfg.Retry = iscsi.RetryPolicy{MaxAttempts: 1}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			s, err := iscsi.Dial(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.LUN().ReadAt(make([]byte, 4096), 0); err != nil {
				t.Fatal(err)
			}
			s.Close()
			got := luns()
			if len(got) == 0 || got[len(got)-1] != iscsi.LUNAddr(c.raw) {
				t.Fatalf("LUN fields on the wire %x, want %x", got, c.raw)
			}
		})
	}
	// Every case's commands carried its own LUN, and nothing else.
	if got := luns(); len(got) != 9 {
		t.Errorf("%d distinct LUN fields on the wire, want 9: %x", len(got), got)
	}
}
