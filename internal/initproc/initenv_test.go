package initproc

import (
	"reflect"
	"testing"
)

func TestInitEnv(t *testing.T) {
	for _, tc := range []struct {
		name           string
		kernel         []string
		want, withheld []string
	}{
		{"what the kernel gives", []string{"HOME=/", "TERM=linux", "BOOT_IMAGE=/vmlinuz", "foo=bar"},
			[]string{"HOME=/", "TERM=linux", "BOOT_IMAGE=/vmlinuz", "foo=bar"}, nil},
		{"HOME and TERM filled in", []string{"foo=bar"},
			[]string{"foo=bar", "HOME=/", "TERM=linux"}, nil},
		{"kept values win", []string{"TERM=vt100", "HOME=/root"},
			[]string{"TERM=vt100", "HOME=/root"}, nil},
		{"netroot carries CHAP secrets", []string{"HOME=/", "TERM=linux", "netroot=iscsi:u:s3cret@192.0.2.1::3260:1:iqn.t:x"},
			[]string{"HOME=/", "TERM=linux"}, []string{"netroot"}},
		{"names mentioning a secret", []string{"HOME=/", "TERM=linux", "chap_user=u", "MY_SECRET=x", "password=p",
			"rootpassphrase=p", "CHAPSecret=s", "NetRoot=x", "path=/bin"},
			[]string{"HOME=/", "TERM=linux", "path=/bin"},
			[]string{"chap_user", "MY_SECRET", "password", "rootpassphrase", "CHAPSecret", "NetRoot"}},
		{"malformed entries dropped", []string{"=x", "noequals", "a=", "b==c"},
			[]string{"a=", "b==c", "HOME=/", "TERM=linux"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, withheld := initEnv(tc.kernel)
			if !reflect.DeepEqual(env, tc.want) || !reflect.DeepEqual(withheld, tc.withheld) {
				t.Errorf("initEnv(%q)\n = %q, withheld %q\nwant %q, withheld %q", tc.kernel, env, withheld, tc.want, tc.withheld)
			}
		})
	}
}
