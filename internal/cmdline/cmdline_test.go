package cmdline

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/isboot/isboot/iscsi"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want CmdLine
	}{
		{"empty", "", CmdLine{}},
		{"unrelated keys ignored", "console=ttyS0 quiet BOOT_IMAGE=/vmlinuz", CmdLine{}},
		{"debug levels", "isboot.debug=3 ibft.verbose=1 ibft.acpi_table=2", CmdLine{Debug: 3, IBFTVerbose: true, IBFTACPITable: 2}},
		{"bare flags", "isboot.debug isboot.shell isboot.dhcp ibft.verbose", CmdLine{Debug: 1, Shell: true, DHCP: true, DHCPSet: true, IBFTVerbose: true}},
		{"timeout", "isboot.timeout=30", CmdLine{Timeout: 30}},
		{"guard off", "isboot.guard=0", CmdLine{NoGuard: true}},
		{"read-ahead", "isboot.readahead=2048", CmdLine{ReadAheadKB: 2048}},
		{"read-ahead off", "isboot.readahead=0", CmdLine{NoReadAhead: true}},
		{"guard on", "isboot.guard=0 isboot.guard", CmdLine{}},
		{"dash equals underscore", "ibft.acpi-table=1", CmdLine{IBFTACPITable: 1}},
		{"root uuid lowercased", "root=UUID=0A1B-C2 rw", CmdLine{Root: Root{RootUUID, "0a1b-c2"}, ReadWrite: true}},
		{"root label", "root=LABEL=My Root", CmdLine{Root: Root{RootLabel, "My"}}},
		{"quoted label", `root="LABEL=My Root" ro`, CmdLine{Root: Root{RootLabel, "My Root"}}},
		{"partuuid", "root=PARTUUID=ABC-01", CmdLine{Root: Root{RootPartUUID, "abc-01"}}},
		{"partlabel", "root=PARTLABEL=rootfs", CmdLine{Root: Root{RootPartLabel, "rootfs"}}},
		{"path and fs", "root=/dev/nbd0p2 rootfstype=ext4 rootflags=noatime,discard init=/bin/sh",
			CmdLine{Root: Root{RootPath, "/dev/nbd0p2"}, RootFSType: "ext4", RootFlags: "noatime,discard", Init: "/bin/sh"}},
		{"last ro/rw wins", "rw ro", CmdLine{}},
		{"init args", "isboot.debug=2 -- single foo", CmdLine{Debug: 2, InitArgs: []string{"single", "foo"}}},
		{"initiator", "rd.iscsi.initiator=iqn.2024-01.org.example:host1", CmdLine{Initiator: "iqn.2024-01.org.example:host1"}},
		{"netroot minimal", "netroot=iscsi:10.0.2.2::::iqn.2024-01.org.example:disk",
			CmdLine{Netroot: &Netroot{Server: "10.0.2.2", Target: "iqn.2024-01.org.example:disk"}}},
		{"netroot full", "netroot=iscsi:u:p@a:b:rs@192.168.1.5:6:3261:2:iqn.x:y",
			CmdLine{Netroot: &Netroot{User: "u", Secret: "p@a", RevUser: "b", RevSecret: "rs", Server: "192.168.1.5", Proto: "6", Port: 3261, LUN: 2, Target: "iqn.x:y"}}},
		{"netroot ipv6", "netroot=iscsi:user:pw@[fd00::2]::3260:1:iqn.2024-01.org.example:disk",
			CmdLine{Netroot: &Netroot{User: "user", Secret: "pw", Server: "fd00::2", Port: 3260, LUN: 1, Target: "iqn.2024-01.org.example:disk"}}},
		{"netroot hostname", "netroot=iscsi:san.example.org:::0:iqn.t",
			CmdLine{Netroot: &Netroot{Server: "san.example.org", Target: "iqn.t"}}},
		{"two netroots, multipath", "netroot=iscsi:10.0.2.2::::iqn.x:y isboot.multipath netroot=iscsi:a:b@10.0.3.2::3261:0:iqn.x:y",
			CmdLine{Netroot: &Netroot{Server: "10.0.2.2", Target: "iqn.x:y"}, Multipath: true,
				Netroots: []*Netroot{{Server: "10.0.2.2", Target: "iqn.x:y"}, {User: "a", Secret: "b", Server: "10.0.3.2", Port: 3261, Target: "iqn.x:y"}}}},
		{"digests", "rd.iscsi.param=HeaderDigest=CRC32C rd.iscsi.param=node.conn[0].iscsi.DataDigest=crc32c,none",
			CmdLine{HeaderDigest: iscsi.DigestCRC32C, DataDigest: iscsi.DigestPreferCRC32C}},
		{"last digest wins", "rd.iscsi.param=DataDigest=CRC32C rd.iscsi.param=datadigest=None",
			CmdLine{DataDigest: iscsi.DigestNone}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseString(tt.in)
			if err != nil {
				t.Fatalf("ParseString(%q): %v", tt.in, err)
			}
			if tt.want.Timeout == 0 {
				tt.want.Timeout = -1
			}
			if tt.want.Netroot != nil && tt.want.Netroots == nil {
				tt.want.Netroots = []*Netroot{tt.want.Netroot}
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("ParseString(%q)\n got %+v\nwant %+v", tt.in, *got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string // substring of the one line
	}{
		{"isboot.debug=4", `isboot.debug: "4" is not a number from 0 to 3`},
		{"isboot.debug=x", "isboot.debug:"},
		{"ibft.acpi_table=0", "ibft.acpi_table:"},
		{"isboot.timeout=-5", "isboot.timeout:"},
		{"ibft.verbose=maybe", `ibft.verbose: "maybe" is not 0 or 1`},
		{"isboot.guard=sometimes", `isboot.guard: "sometimes" is not 0 or 1`},
		{"root=", "root: empty value"},
		{"isboot.multipath=2", "isboot.multipath:"},
		{"isboot.readahead=-1", "isboot.readahead:"},
		{"isboot.readahead=1M", "isboot.readahead:"},
		{"root=FOO=bar", `root: "FOO=bar": want UUID=`},
		{"root=UUID=", "root:"},
		{"root=sda1", "root:"},
		{"init=sbin/init", "init:"},
		{"rd.iscsi.initiator=", "rd.iscsi.initiator: empty"},
		{"netroot=nfs:1.2.3.4:/x", "netroot: want iscsi:"},
		{"netroot=iscsi:1.2.3.4", "netroot: too few fields"},
		{"netroot=iscsi:1.2.3.4:::iqn.x", "netroot: too few fields"},
		{"netroot=iscsi:1.2.3.4::99999:0:iqn.x", `netroot: port "99999"`},
		{"netroot=iscsi:1.2.3.4::abc:0:iqn.x", `netroot: port "abc"`},
		{"netroot=iscsi:1.2.3.4:::-1:iqn.x", `netroot: lun "-1"`},
		{"netroot=iscsi:1.2.3.4:udp:::iqn.x", `netroot: protocol "udp"`},
		{"netroot=iscsi:1.2.3.4::::", "netroot: empty target"},
		{"netroot=iscsi:::::iqn.x", "netroot: empty server"},
		{"netroot=iscsi:[fd00::1::::iqn.x", "netroot: server: missing ']'"},
		{"netroot=iscsi:[fd00::1]x::::iqn.x", "netroot: server: want ':'"},
		{"netroot=iscsi:onlyuser@1.2.3.4::::iqn.x", "netroot: credentials: want user:secret"},
		{"netroot=iscsi:u:@1.2.3.4::::iqn.x", "netroot: credentials: empty"},
		{"rd.iscsi.param=HeaderDigest=MD5", `rd.iscsi.param: HeaderDigest: digest "MD5": want None, CRC32C`},
		{"rd.iscsi.param=HeaderDigest", `rd.iscsi.param: "HeaderDigest": want Key=Value`},
		{"rd.iscsi.param=node.session.timeo.replacement_timeout=30", "rd.iscsi.param: node.session.timeo.replacement_timeout: not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := ParseString("console=ttyS0 " + tt.in + " quiet")
			if err == nil {
				t.Fatalf("ParseString(%q): no error, want %q", tt.in, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseString(%q) error %q, want it to contain %q", tt.in, err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is more than one line: %q", err)
			}
		})
	}
}

// A malformed key is reported but the keys around it still take effect.
func TestParseKeepsGoodKeys(t *testing.T) {
	c, err := ParseString("isboot.debug=9 root=LABEL=r rw")
	if err == nil {
		t.Fatal("want an error for isboot.debug=9")
	}
	if c.Root != (Root{RootLabel, "r"}) || !c.ReadWrite || c.Debug != 0 {
		t.Errorf("got %+v", *c)
	}
}

func TestSecretsNeverFormatted(t *testing.T) {
	const secret = "s3cr3t-Pa55"
	const rsecret = "r3v-S3cret"
	good := "netroot=iscsi:alice:" + secret + ":bob:" + rsecret + "@10.0.0.1::3260:1:iqn.t:x"
	c, err := ParseString(good)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Netroot.String()
	if strings.Contains(s, secret) || strings.Contains(s, rsecret) {
		t.Errorf("Netroot.String() leaks a secret: %s", s)
	}
	if want := "iscsi:alice:***:bob:***@10.0.0.1::3260:1:iqn.t:x"; s != want {
		t.Errorf("Netroot.String() = %q, want %q", s, want)
	}
	for _, bad := range []string{
		"netroot=iscsi:alice:" + secret + ":bob@10.0.0.1::3260:1:iqn.t",
		"netroot=iscsi:alice:" + secret + "@10.0.0.1::port:1:iqn.t",
		"netroot=iscsi:alice:" + secret + "@10.0.0.1::1:lun:iqn.t",
	} {
		_, err := ParseString(bad)
		if err == nil {
			t.Fatalf("%s: no error", bad)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error leaks the secret: %v", err)
		}
	}
}

func TestNetrootStringIPv6(t *testing.T) {
	n := &Netroot{Server: "fd00::2", LUN: 0, Target: "iqn.t"}
	if got, want := n.String(), "iscsi:[fd00::2]:::0:iqn.t"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	back, err := ParseNetroot(n.String())
	if err != nil || !reflect.DeepEqual(back, n) {
		t.Errorf("round trip: %+v, %v", back, err)
	}
}

// A malformed key that only loses its own effect is a warning naming it; a malformed
// root= or netroot= (what to boot) stops the boot, clearly.
func TestSplitWarningsFromFatal(t *testing.T) {
	for _, tc := range []struct {
		in       string
		fatal    string   // substring; "" for none
		warnings []string // one per warning, each naming its key
	}{
		{"root=LABEL=r rw", "", nil},
		{"isboot.debug=9 isboot.timeout=x ibft.verbose=maybe root=LABEL=r", "",
			[]string{"isboot.debug:", "isboot.timeout:", "ibft.verbose:"}},
		{"init=sbin/init rd.iscsi.initiator= ibft.acpi_table=0", "",
			[]string{"init:", "rd.iscsi.initiator:", "ibft.acpi_table:"}},
		{"rd.iscsi.param=HeaderDigest=sha1 root=LABEL=r", "", []string{"rd.iscsi.param:"}},
		{"isboot.debug=9 root=sda1", `cmdline: root: "sda1": want UUID=`, []string{"isboot.debug:"}},
		{"netroot=iscsi:1.2.3.4 isboot.shell=2", "cmdline: netroot: too few fields", []string{"isboot.shell:"}},
		{"root= netroot=nfs:x", "root: empty value", nil},
	} {
		c, err := ParseString(tc.in)
		if c == nil {
			t.Fatalf("%q: no CmdLine", tc.in)
		}
		fatal, warnings := Split(err)
		if (fatal == nil) != (tc.fatal == "") || fatal != nil && !strings.Contains(fatal.Error(), tc.fatal) {
			t.Errorf("%q: fatal %v, want %q", tc.in, fatal, tc.fatal)
		}
		if len(warnings) != len(tc.warnings) {
			t.Errorf("%q: warnings %v, want %q", tc.in, warnings, tc.warnings)
			continue
		}
		for i, w := range warnings {
			if !strings.Contains(w.Error(), "cmdline: "+tc.warnings[i]) {
				t.Errorf("%q: warning %q does not name %q", tc.in, w, tc.warnings[i])
			}
		}
	}
	if fatal, w := Split(errors.New("cmdline: open /proc/cmdline: no such file")); fatal == nil || w != nil {
		t.Errorf("an unreadable command line: fatal %v, warnings %v", fatal, w)
	}
}
