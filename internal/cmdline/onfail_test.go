package cmdline

import (
	"strings"
	"testing"
)

func TestOnFail(t *testing.T) {
	for _, tc := range []struct {
		line string
		want OnFail
		err  string // a warning naming the key
	}{
		{"", OnFail{}, ""},
		{"isboot.onfail=shell", OnFail{}, ""},
		{"isboot.onfail=reboot", OnFail{Reboot: true, Delay: DefaultRebootDelay}, ""},
		{"isboot.onfail=reboot:0", OnFail{Reboot: true}, ""},
		{"isboot.onfail=reboot:30", OnFail{Reboot: true, Delay: 30}, ""},
		{"isboot.onfail=reboot:x", OnFail{}, "isboot.onfail:"},
		{"isboot.onfail=halt", OnFail{}, "isboot.onfail:"},
		{"isboot.onfail=shell:5", OnFail{}, "isboot.onfail:"},
	} {
		c, err := ParseString(tc.line)
		if c.OnFail != tc.want {
			t.Errorf("%q: OnFail %+v, want %+v", tc.line, c.OnFail, tc.want)
		}
		fatal, warnings := Split(err)
		switch {
		case fatal != nil:
			t.Errorf("%q: fatal %v; a bad isboot.onfail must only warn", tc.line, fatal)
		case tc.err == "" && len(warnings) > 0:
			t.Errorf("%q: warnings %v", tc.line, warnings)
		case tc.err != "" && (len(warnings) != 1 || !strings.Contains(warnings[0].Error(), tc.err)):
			t.Errorf("%q: warnings %v, want one naming %s", tc.line, warnings, tc.err)
		}
	}
	if s := (OnFail{Reboot: true, Delay: 5}).String(); s != "reboot:5" {
		t.Errorf("String() = %q", s)
	}
}
