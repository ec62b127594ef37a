package initproc

import (
	"slices"
	"testing"
)

// A distribution's initramfs runs PID 1's steps up to the attach, never the shell,
// the mount or the switch; "find root" only when asked.
func TestAttachSteps(t *testing.T) {
	names := func(steps []step) []string {
		var out []string
		for _, s := range steps {
			out = append(out, s.name)
		}
		return out
	}
	b := &boot{}
	all := names(b.steps())
	plain := names(b.attachSteps(false))
	if want := all[:slices.Index(all, stepAttach)+1]; !slices.Equal(plain, want) {
		t.Errorf("attach steps %q, want %q", plain, want)
	}
	withRoot := names(b.attachSteps(true))
	if want := append(slices.Clone(plain), stepFindRoot); !slices.Equal(withRoot, want) {
		t.Errorf("attach steps with root %q, want %q", withRoot, want)
	}
}

func TestInChildCgroup(t *testing.T) {
	for in, want := range map[string]bool{
		"0::/\n": false,
		"0::/system.slice/dracut-initqueue.service\n":                   true,
		"12:pids:/\n1:name=systemd:/\n0::/\n":                           false,
		"1:name=systemd:/system.slice/dracut-initqueue.service\n0::/\n": true,
		"": false,
	} {
		if got := inChildCgroup([]byte(in)); got != want {
			t.Errorf("inChildCgroup(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestDisabled(t *testing.T) {
	for line, want := range map[string]bool{
		"ro quiet isboot=off":          true,
		"isboot=0 root=UUID=x":         true,
		"rd.isboot=no":                 true,
		"isboot=on ro":                 false,
		"isboot.debug=0":               false,
		"ro -- isboot=off":             false, // init's arguments, not the kernel's
		"netroot=iscsi:1.2.3.4::::iqn": false,
	} {
		if got, _ := disabled(line); got != want {
			t.Errorf("disabled(%q) = %v, want %v", line, got, want)
		}
	}
}
