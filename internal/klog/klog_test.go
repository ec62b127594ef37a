package klog

import (
	"bytes"
	"testing"
)

func TestLevelsAndConsoleEcho(t *testing.T) {
	var kmsg, con bytes.Buffer
	// console_loglevel 5: the kernel itself echoes Err and Warn to the console.
	l := New("isboot", &kmsg, &con, 5, 1)
	l.Errorf("login failed: %s", "auth")
	l.Infof("two\nlines")
	l.Debugf(1, "shown at debug 1")
	l.Debugf(2, "hidden at debug 1")
	wantK := "<3>isboot: login failed: auth\n<6>isboot: two\n<6>isboot: lines\n<7>isboot: shown at debug 1\n"
	if kmsg.String() != wantK {
		t.Errorf("kmsg:\n%q\nwant\n%q", kmsg.String(), wantK)
	}
	wantC := "isboot: two\nisboot: lines\nisboot: shown at debug 1\n"
	if con.String() != wantC {
		t.Errorf("console:\n%q\nwant\n%q", con.String(), wantC)
	}
}

func TestNoKmsgEverythingToConsole(t *testing.T) {
	var con bytes.Buffer
	l := New("isboot", nil, &con, 7, 0)
	l.Errorf("e")
	l.Debugf(1, "d")
	if con.String() != "isboot: e\n" {
		t.Errorf("console: %q", con.String())
	}
}
