package netcfg

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func (ap *applier) resolvConf() error {
	if len(ap.p.DNS) == 0 {
		return nil
	}
	from := fmt.Sprintf("iBFT nic%d", ap.p.NIC)
	if ap.p.NIC < 0 {
		from = "ip= on the kernel command line"
	}
	file, restore, changed, err := writeResolvConf(ap.o.ResolvConf, ap.p.DNS, from, ap.logf)
	if err != nil {
		return fmt.Errorf("netcfg: %w", err)
	}
	if changed {
		ap.a.did("wrote the DNS servers to "+file, restore)
	}
	return nil
}

func (ap *applier) hostname() error {
	want := ap.p.Hostname
	if want == "" {
		return nil
	}
	set, get := ap.o.SetHostname, ap.o.Hostname
	if set == nil {
		set = func(s string) error { return unix.Sethostname([]byte(s)) }
	}
	if get == nil {
		get = utsHostname
	}
	old, err := get()
	if err != nil {
		return fmt.Errorf("netcfg: read the hostname: %w", err)
	}
	if old == want {
		return nil
	}
	if err := set(want); err != nil {
		return fmt.Errorf("netcfg: set the hostname to %q: %w", want, err)
	}
	ap.a.did(fmt.Sprintf("set the hostname to %q (was %q)", want, old), func() error {
		if err := set(old); err != nil {
			return fmt.Errorf("restore the hostname %q: %w", old, err)
		}
		return nil
	})
	return nil
}

func utsHostname() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(u.Nodename[:]), nil
}
