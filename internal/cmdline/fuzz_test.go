package cmdline

import (
	"regexp"
	"strings"
	"testing"
)

// secretShape keeps the fuzzed secret to characters that no error text places
// next to one another by itself, so a match means the secret was quoted.
var secretShape = regexp.MustCompile(`^[A-Za-z0-9]{8,40}$`)

// FuzzParse: any command line parses without a panic into errors of one line each,
// and a CHAP secret given in netroot= (or rd.iscsi.password=) never appears in an
// error, whatever surrounds it.
func FuzzParse(f *testing.F) {
	for _, seed := range [][3]string{
		{"ip=dhcp root=LABEL=r", "Secret123x", "10.0.2.2::3260:1:iqn.2026-01.org.example:disk"},
		{"ip=10.0.2.15::10.0.2.2:255.255.255.0:host:eth0:none", "pw0rdPW0RD", "[fd00::2]::3260:1:iqn.x:y"},
		{"ip=[fd00::15]::[fd00::1]:64:h:eth0:none:[fd00::53] ip=eth1:dhcp6:1500:52:54:00:12:34:56", "aaaaaaaaaa", "10.0.2.2:6:99999:1:iqn.x"},
		{"netroot=iscsi:a:b:c:d@1.2.3.4:::: rd.iscsi.param=HeaderDigest=CRC32C", "ZZZZZZZZ99", ":::-1:"},
		{`rd.iscsi.firmware=maybe rd.iscsi.ibft "ip=eth0:dhcp" isboot.debug=9 -- init args`, "Qwertyuiop", "[fd00::1"},
		{"ip=:dhcp ip=1:2:3 ip=[ ip=eth0:on::zz netroot=iscsi:", "0123456789", "host:::lun:"},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	f.Fuzz(func(t *testing.T, line, secret, tail string) {
		check := func(in string) {
			c, err := ParseString(in)
			if c == nil {
				t.Fatalf("%q: no CmdLine", in)
			}
			if err == nil {
				return
			}
			fatal, warnings := Split(err)
			for _, e := range append(warnings, fatal) {
				if e != nil && strings.Contains(e.Error(), "\n") && !strings.Contains(fatal.Error(), "\n") {
					t.Errorf("%q: an error spans lines: %q", in, e)
				}
			}
			if secretShape.MatchString(secret) && !strings.Contains(strings.ReplaceAll(line+tail, `"`, ""), secret) &&
				strings.Contains(err.Error(), secret) {
				t.Errorf("%q: the secret reached the error: %v", in, err)
			}
		}
		check(line)
		check(line + " netroot=iscsi:user:" + secret + "@" + tail)
		check(line + " netroot=iscsi:user:" + secret + ":ruser:" + secret + "@" + tail + " " + line)
		check("rd.iscsi.password=" + secret + " " + line)
	})
}
