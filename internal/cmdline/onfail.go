package cmdline

import (
	"fmt"
	"strings"
)

// OnFail is isboot.onfail=: what a boot that failed does. The zero value is the
// rescue shell.
type OnFail struct {
	Reboot bool
	Delay  int // seconds before the reboot
}

// DefaultRebootDelay is how long isboot.onfail=reboot waits, so that the console
// shows why before the machine restarts.
const DefaultRebootDelay = 10

func (o OnFail) String() string {
	if o.Reboot {
		return fmt.Sprintf("reboot:%d", o.Delay)
	}
	return "shell"
}

// parseOnFail reads shell, reboot or reboot:SECONDS.
func parseOnFail(v string) (OnFail, error) {
	what, secs, hasSecs := strings.Cut(v, ":")
	switch what {
	case "shell":
		if hasSecs {
			return OnFail{}, fmt.Errorf("%q: shell takes no seconds", v)
		}
		return OnFail{}, nil
	case "reboot":
		if !hasSecs {
			return OnFail{Reboot: true, Delay: DefaultRebootDelay}, nil
		}
		n, err := intIn(secs, 0, 1<<20)
		if err != nil {
			return OnFail{}, err
		}
		return OnFail{Reboot: true, Delay: n}, nil
	}
	return OnFail{}, fmt.Errorf("%q is not shell, reboot or reboot:SECONDS", v)
}
