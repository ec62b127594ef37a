package ibft

import (
	"fmt"
	"strings"
	"testing"
)

func TestBootChoice(t *testing.T) {
	for _, tc := range []struct {
		fixture      string
		nic, target  int
		notesContain string
	}{
		{"basic", 0, 0, ""},
		{"ipxe-like-bios", 0, 0, ""},
		{"two-nics-two-targets", 1, 1, ""},
		{"expansion", 3, 3, ""},
		{"no-boot-flags", 0, 0, "no target is boot-selected"},
	} {
		tb := mustParseFixture(t, tc.fixture)
		c, err := tb.BootChoice()
		if err != nil {
			t.Fatalf("%s: %v", tc.fixture, err)
		}
		if c.NIC.Index != tc.nic || c.Target.Index != tc.target {
			t.Errorf("%s: boot nic%d target%d, want nic%d target%d", tc.fixture, c.NIC.Index, c.Target.Index, tc.nic, tc.target)
		}
		notes := strings.Join(c.Notes, "; ")
		if (tc.notesContain == "") != (notes == "") || !strings.Contains(notes, tc.notesContain) {
			t.Errorf("%s: notes %q, want %q", tc.fixture, notes, tc.notesContain)
		}
	}
}

func TestBootFallbacks(t *testing.T) {
	tb := basicTable()
	tb.Targets[0].NIC = 7 // names a NIC that does not exist
	c, err := tb.BootChoice()
	if err != nil || c.NIC.Index != 0 || len(c.Notes) != 1 || !strings.Contains(c.Notes[0], "names nic7") {
		t.Errorf("dangling association: %+v, %v", c, err)
	}

	tb = basicTable()
	tb.Targets[0].Flags = 0
	if _, _, err := tb.Boot(); err == nil || !strings.Contains(err.Error(), "no valid target") {
		t.Errorf("no valid target: err %v", err)
	}

	tb = basicTable()
	tb.NICs[0].Flags = 0
	if _, _, err := tb.Boot(); err == nil || !strings.Contains(err.Error(), "no valid NIC") {
		t.Errorf("no valid NIC: err %v", err)
	}
}

func TestKeys(t *testing.T) {
	tb := mustParseFixture(t, "chap-mutual")
	tb.Source = "file:x"
	got := map[string]string{}
	for _, kv := range tb.Keys(false) {
		if !strings.HasPrefix(kv.Key, "hw.ibft.") {
			t.Errorf("key %q lacks the hw.ibft. prefix", kv.Key)
		}
		got[kv.Key] = kv.Value
	}
	for k, v := range map[string]string{
		"hw.ibft.initiator_name":    "iqn.2010-04.org.ipxe:test",
		"hw.ibft.initiator_address": "10.0.2.15",
		"hw.ibft.target_address":    "10.0.2.2",
		"hw.ibft.target_port":       "3260",
		"hw.ibft.target_lun":        "1",
		"hw.ibft.nic_prefix":        "24",
		"hw.ibft.nic_gateway":       "10.0.2.2",
		"hw.ibft.nic_mac":           "52:54:00:12:34:56",
		"hw.ibft.nic_pci_bdf":       "00:03.0",
		"hw.ibft.chap_name":         "user",
		"hw.ibft.chap_secret":       Mask,
		"hw.ibft.rev_chap_secret":   Mask,
		"hw.ibft.source":            "file:x",
	} {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	for _, kv := range tb.Keys(true) {
		if kv.Key == "hw.ibft.chap_secret" && kv.Value != "secretsecret1" {
			t.Errorf("showSecrets: chap_secret %q", kv.Value)
		}
	}
}

func TestLUN(t *testing.T) {
	for _, tc := range []struct {
		raw [8]byte
		n   uint64
	}{
		{[8]byte{}, 0},
		{[8]byte{0, 1}, 1},
		{[8]byte{0, 255}, 255},
		{[8]byte{0x40, 1}, 1},              // flat space
		{[8]byte{0x41, 0x2c}, 300},         // flat space
		{[8]byte{0x01, 0x02}, 0x0102},      // peripheral with bus 1: kernel's int
		{[8]byte{0, 1, 0, 2}, 0x0002_0001}, // second level: kernel's int
	} {
		if got := LUNNumber(tc.raw); got != tc.n {
			t.Errorf("LUNNumber(%x) = %d, want %d", tc.raw, got, tc.n)
		}
	}
	for _, n := range []uint64{0, 1, 255, 256, 16383} {
		raw, err := SAMLUN(n)
		if err != nil || LUNNumber(raw) != n {
			t.Errorf("SAMLUN(%d) = %x, %v", n, raw, err)
		}
	}
	if _, err := SAMLUN(16384); err == nil {
		t.Error("SAMLUN(16384) has no single-level form but gave no error")
	}
}

func TestEncodeRejects(t *testing.T) {
	for name, mut := range map[string]func(*Table){
		"lun mismatch":   func(tb *Table) { tb.Targets[0].LUN = 5 },
		"big lun no raw": func(tb *Table) { tb.Targets[0].LUN, tb.Targets[0].LUNRaw = 20000, [8]byte{} },
		"prefix":         func(tb *Table) { tb.NICs[0].Prefix = 40 },
		"oem id":         func(tb *Table) { tb.OEMID = "TOOLONG" },
		"signature":      func(tb *Table) { tb.Signature = "ABCD" },
		"index":          func(tb *Table) { tb.NICs[0].Index = 300 },
	} {
		tb := basicTable()
		mut(tb)
		if _, err := Encode(tb); err == nil {
			t.Errorf("%s: Encode accepted it", name)
		}
	}
	// LUN alone (LUNRaw left zero) is filled in.
	tb := basicTable()
	tb.Targets[0].LUNRaw = [8]byte{}
	tb.Targets[0].LUN = 2
	got, err := Parse(mustEncode(tb))
	if err != nil || got.Targets[0].LUNRaw != [8]byte{0, 2} {
		t.Errorf("LUN 2 without LUNRaw: %v, %x", err, got.Targets[0].LUNRaw)
	}
}

func mustParseFixture(t *testing.T, name string) *Table {
	t.Helper()
	for _, f := range fixtures {
		if f.name == name {
			tb, err := Parse(f.bytes())
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return tb
		}
	}
	t.Fatalf("no fixture %s", name)
	return nil
}

// TestExpansionSlots: an expansion slot may hold a vendor extension (id 5), which is
// skipped; any other wrong id is a defect.
func TestExpansionSlots(t *testing.T) {
	b := fixtureBytes(t, "expansion")
	nic2 := int(b[HeaderLen+18]) | int(b[HeaderLen+19])<<8 // first expansion offset
	for id, want := range map[byte]string{
		idExtension: "",
		idTarget:    "ibft: nic2 at " + fmt.Sprintf("%#x", nic2) + ": structure id 4, want 3",
	} {
		c := append([]byte(nil), b...)
		c[nic2] = id
		c[9] = 0
		c[9] = -byteSum(c)
		tb, err := Parse(c)
		switch {
		case want == "" && (err != nil || len(tb.NICs) != 3 || len(tb.Targets) != 4):
			t.Errorf("extension in nic2: %v, %d NICs", err, len(tb.NICs))
		case want != "" && (err == nil || err.Error() != want):
			t.Errorf("id %d in nic2: %v, want %q", id, err, want)
		}
	}
}
