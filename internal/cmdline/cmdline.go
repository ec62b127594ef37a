// Package cmdline parses the kernel command line keys isboot understands: its own
// (isboot.*, ibft.*), the generic root ones (root=, rootfstype=, ro/rw, init=) and
// dracut's network and iSCSI keys (ip=, netroot=iscsi:..., rd.iscsi.initiator=,
// rd.iscsi.param=, rd.iscsi.firmware=, rd.iscsi.ibft=); other rd.iscsi.* keys get a
// warning.
//
// CHAP secrets given in netroot= are visible to anyone who reads /proc/cmdline; that
// is the user's choice, but nothing here ever formats them into a message.
package cmdline

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/isboot/isboot/iscsi"
)

// CmdLine is what the boot needs from the kernel command line. Zero values mean
// "not given".
type CmdLine struct {
	Debug         int  // isboot.debug=0..3 (bare isboot.debug means 1)
	IBFTVerbose   bool // ibft.verbose=0|1
	IBFTACPITable int  // ibft.acpi_table=N, 1-based instance; 0 = first found
	Root          Root
	RootFSType    string
	RootFlags     string
	ReadWrite     bool   // rw given after (or without) ro; the kernel's default is ro
	Init          string // init=; "" means the default, /sbin/init
	Shell         bool   // isboot.shell: rescue shell before switch_root
	DHCP          bool   // isboot.dhcp: renew the iBFT's lease by DHCP after configuring it
	NoGuard       bool   // isboot.guard=0: no guard on the boot NIC (files in /run, daemon watch)
	DHCPSet       bool   // isboot.dhcp was given (=0 turns off the renewal of an iBFT DHCP lease)
	// Timeout is isboot.timeout=SECONDS: how long the boot waits for the LUN before
	// the rescue shell (the daemon keeps trying). -1: not given; 0: forever.
	Timeout int
	OnFail  OnFail // isboot.onfail=shell|reboot[:SECONDS]
	// Netroots are the netroot= keys in order: the first is the boot target, the
	// others are more paths to the same LUN, used one at a time or, with Multipath,
	// all at once. Netroot is Netroots[0].
	Netroots  []*Netroot
	Netroot   *Netroot
	Initiator string // rd.iscsi.initiator=
	// IP are the ip= keys in order. The first configures the boot NIC; ip=ibft (or
	// no ip= at all) leaves the network to the iBFT.
	IP []IPConfig
	// Firmware is rd.iscsi.firmware= or rd.iscsi.ibft= when FirmwareSet: use the
	// iBFT (1) or ignore it and boot from the command line alone (0). Not given, the
	// iBFT is read and the command line overrides it.
	Firmware, FirmwareSet bool
	InitArgs              []string // everything after "--", passed to init
	// HeaderDigest and DataDigest come from rd.iscsi.param=HeaderDigest=CRC32C (or
	// open-iscsi's name, node.conn[0].iscsi.HeaderDigest=): one value is required.
	HeaderDigest iscsi.Digest
	DataDigest   iscsi.Digest
	// Multipath is isboot.multipath=0|1: serve the LUN over all its paths at once
	// (the iBFT's targets naming it, several netroot=) rather than failing over.
	Multipath bool
	// ReadAheadKB is isboot.readahead=KiB: the largest read the daemon fetches ahead
	// of a sequential reader; 0: not given, the daemon's default. isboot.readahead=0
	// sets NoReadAhead.
	ReadAheadKB int
	NoReadAhead bool
}

// RootKind says how root= names the root filesystem.
type RootKind string

const (
	RootDefault   RootKind = ""          // first Linux filesystem on the LUN, else the LUN
	RootUUID      RootKind = "UUID"      // filesystem UUID
	RootLabel     RootKind = "LABEL"     // filesystem label
	RootPartUUID  RootKind = "PARTUUID"  // GPT unique partition GUID or MBR <sig>-<nn>
	RootPartLabel RootKind = "PARTLABEL" // GPT partition name
	RootPath      RootKind = "path"      // a device path such as /dev/nbd0p2
)

// Root is a parsed root= value.
type Root struct {
	Kind  RootKind
	Value string
}

func (r Root) String() string {
	switch r.Kind {
	case RootDefault:
		return "default (first Linux filesystem on the LUN)"
	case RootPath:
		return r.Value
	}
	return string(r.Kind) + "=" + r.Value
}

// Netroot is dracut's netroot=iscsi:[user:pass[:ruser:rpass]@][server]:[proto]:[port]:[lun]:target.
type Netroot struct {
	User, Secret       string // CHAP (target authenticates us)
	RevUser, RevSecret string // mutual CHAP (we authenticate the target)
	Server             string // host name or IP; an IPv6 address without brackets
	Proto              string // "" or "6" (TCP); dracut ignores it too
	Port               uint16 // 0 means the default, 3260
	LUN                uint64
	Target             string
}

// String describes the netroot with the secrets masked, so it is safe to log.
func (n *Netroot) String() string {
	var auth string
	if n.User != "" {
		auth = n.User + ":***"
		if n.RevUser != "" {
			auth += ":" + n.RevUser + ":***"
		}
		auth += "@"
	}
	server := n.Server
	if strings.Contains(server, ":") {
		server = "[" + server + "]"
	}
	port := ""
	if n.Port != 0 {
		port = strconv.Itoa(int(n.Port))
	}
	return fmt.Sprintf("iscsi:%s%s:%s:%s:%d:%s", auth, server, n.Proto, port, n.LUN, n.Target)
}

// Read parses /proc/cmdline.
func Read() (*CmdLine, error) {
	f, err := os.Open("/proc/cmdline")
	if err != nil {
		return nil, fmt.Errorf("cmdline: %w", err)
	}
	defer f.Close()
	return Parse(f)
}

// Parse reads a kernel command line. Unknown keys are ignored. Every malformed value of
// a key we own is reported (joined *KeyErrors) and left at its zero value; the rest is
// still filled in, so a caller may choose to go on (see Split).
func Parse(r io.Reader) (*CmdLine, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("cmdline: read: %w", err)
	}
	return ParseString(string(b))
}

// ParseString is Parse for a string.
func ParseString(s string) (*CmdLine, error) {
	c := &CmdLine{Timeout: -1}
	var errs []error
	words := split(s)
	for i, w := range words {
		if w == "--" {
			c.InitArgs = words[i+1:]
			break
		}
		key, val, hasVal := strings.Cut(w, "=")
		// The kernel treats - and _ alike in parameter names.
		key = strings.ReplaceAll(key, "-", "_")
		if err := c.set(key, val, hasVal); err != nil {
			errs = append(errs, &KeyError{Key: key, Err: err})
		}
	}
	if secrets := credentials(words); len(secrets) > 0 {
		for i, e := range errs {
			errs[i] = &masked{e.(*KeyError), secrets}
		}
	}
	return c, errors.Join(errs...)
}

// credentials are the fields before the '@' of anything that looks like an iSCSI
// netroot, wherever it stands (a stray quote can hide one inside another key's
// value), and the values of rd.iscsi.*password keys: the texts no error may show.
func credentials(words []string) []string {
	var out []string
	for _, w := range words {
		for rest := w; ; {
			i := strings.Index(rest, "iscsi:")
			if i < 0 {
				break
			}
			rest = rest[i+len("iscsi:"):]
			if at := strings.LastIndex(rest, "@"); at >= 0 {
				for _, f := range strings.Split(rest[:at], ":") {
					out = append(out, strings.Split(f, "@")...)
				}
			}
		}
		if k, v, ok := strings.Cut(w, "="); ok && strings.HasPrefix(k, "rd.iscsi.") && strings.Contains(k, "password") {
			out = append(out, v)
		}
	}
	out = slices.DeleteFunc(out, func(s string) bool { return len(s) < 3 })
	// Longest first, so a secret holding another is masked whole.
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// masked is a KeyError whose text has the command line's credentials masked.
type masked struct {
	*KeyError
	secrets []string
}

func (m *masked) Error() string {
	s := m.KeyError.Error()
	for _, sec := range m.secrets {
		s = strings.ReplaceAll(s, sec, "***")
	}
	return s
}

func (m *masked) Unwrap() error { return m.KeyError }

// KeyError is one malformed key; the key is left at its zero value.
type KeyError struct {
	Key string // as the kernel sees it, with - spelled _
	Err error
}

func (e *KeyError) Error() string { return fmt.Sprintf("cmdline: %s: %v", e.Key, e.Err) }
func (e *KeyError) Unwrap() error { return e.Err }

// Fatal reports a key that names what to boot (root=, netroot=, ip=): going on without
// it would mount another root, log in to another LUN or configure another network
// than the one asked for. Any
// other malformed key only loses its own effect (a debug level, a timeout).
func (e *KeyError) Fatal() bool { return e.Key == "root" || e.Key == "netroot" || e.Key == "ip" }

// Split sorts an error of Parse into what must stop a boot (malformed root= or
// netroot=, or a command line that could not be read) and warnings: malformed keys
// the boot can go on without, each naming its key.
func Split(err error) (fatal error, warnings []error) {
	if err == nil {
		return nil, nil
	}
	all := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		all = j.Unwrap()
	}
	var fatals []error
	for _, e := range all {
		var ke *KeyError
		if errors.As(e, &ke) && !ke.Fatal() {
			warnings = append(warnings, e)
		} else {
			fatals = append(fatals, e)
		}
	}
	return errors.Join(fatals...), warnings
}

func (c *CmdLine) set(key, val string, hasVal bool) error {
	var err error
	switch key {
	case "isboot.debug":
		if !hasVal {
			c.Debug = 1
			return nil
		}
		c.Debug, err = intIn(val, 0, 3)
	case "ibft.verbose":
		c.IBFTVerbose, err = boolValue(val, hasVal)
	case "ibft.acpi_table":
		c.IBFTACPITable, err = intIn(val, 1, 1<<16)
	case "isboot.shell":
		c.Shell, err = boolValue(val, hasVal)
	case "isboot.dhcp":
		c.DHCPSet = true
		c.DHCP, err = boolValue(val, hasVal)
	case "isboot.guard":
		var on bool
		if on, err = boolValue(val, hasVal); err == nil {
			c.NoGuard = !on
		}
	case "isboot.timeout":
		c.Timeout, err = intIn(val, 0, 1<<20)
	case "isboot.onfail":
		c.OnFail, err = parseOnFail(val)
	case "root":
		c.Root, err = parseRoot(val)
	case "rootfstype":
		c.RootFSType = val
	case "rootflags":
		c.RootFlags = val
	case "ro":
		c.ReadWrite = false
	case "rw":
		c.ReadWrite = true
	case "init":
		if val == "" || !strings.HasPrefix(val, "/") {
			return fmt.Errorf("%q is not an absolute path", val)
		}
		c.Init = val
	case "netroot":
		var n *Netroot
		if n, err = ParseNetroot(val); err == nil {
			c.Netroots = append(c.Netroots, n)
			c.Netroot = c.Netroots[0]
		}
	case "ip":
		var ip IPConfig
		if ip, err = ParseIP(val); err == nil {
			c.IP = append(c.IP, ip)
		}
	case "rd.iscsi.firmware", "rd.iscsi.ibft":
		c.FirmwareSet = true
		c.Firmware, err = boolValue(val, hasVal)
	case "isboot.multipath":
		c.Multipath, err = boolValue(val, hasVal)
	case "isboot.readahead":
		if c.ReadAheadKB, err = intIn(val, 0, 64<<10); err == nil {
			c.NoReadAhead = c.ReadAheadKB == 0
		}
	case "rd.iscsi.initiator":
		if val == "" {
			return errors.New("empty initiator name")
		}
		c.Initiator = val
	case "rd.iscsi.param":
		err = c.setISCSIParam(val)
	default:
		if strings.HasPrefix(key, "rd.iscsi.") {
			// Never the value: rd.iscsi.password= holds a secret.
			return errors.New("not supported by isboot, ignored (it takes rd.iscsi.initiator, .param, .firmware and .ibft; the target goes in netroot=)")
		}
	}
	return err
}

// setISCSIParam takes one rd.iscsi.param= value. dracut hands it to iscsistart as
// --param, which names open-iscsi's node settings (node.conn[0].iscsi.HeaderDigest);
// the bare iSCSI key (HeaderDigest) is accepted too. Only the digests are supported.
func (c *CmdLine) setISCSIParam(v string) error {
	key, val, ok := strings.Cut(v, "=")
	if !ok || val == "" {
		return fmt.Errorf("%q: want Key=Value", v)
	}
	var dst *iscsi.Digest
	switch strings.ToLower(strings.TrimPrefix(key, "node.conn[0].iscsi.")) {
	case "headerdigest":
		dst = &c.HeaderDigest
	case "datadigest":
		dst = &c.DataDigest
	default:
		return fmt.Errorf("%s: not supported (isboot takes HeaderDigest= and DataDigest=)", key)
	}
	d, err := iscsi.ParseDigest(val)
	if err != nil {
		return fmt.Errorf("%s: %v", key, err)
	}
	*dst = d
	return nil
}

// split cuts the command line into words the way the kernel does: on white space,
// except inside double quotes, which are dropped.
func split(s string) []string {
	var words []string
	var b strings.Builder
	inQuote, inWord := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			inWord = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n' || r == '\r'):
			if inWord {
				words = append(words, b.String())
				b.Reset()
				inWord = false
			}
		default:
			b.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, b.String())
	}
	return words
}

func intIn(s string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%q is not a number from %d to %d", s, lo, hi)
	}
	return n, nil
}

func boolValue(s string, given bool) (bool, error) {
	if !given {
		return true, nil
	}
	switch strings.ToLower(s) {
	case "1", "y", "yes", "on", "true":
		return true, nil
	case "0", "n", "no", "off", "false":
		return false, nil
	}
	return false, fmt.Errorf("%q is not 0 or 1", s)
}

func parseRoot(v string) (Root, error) {
	if v == "" {
		return Root{}, errors.New("empty value")
	}
	if strings.HasPrefix(v, "/") {
		return Root{Kind: RootPath, Value: v}, nil
	}
	kind, val, ok := strings.Cut(v, "=")
	if ok && val != "" {
		switch k := RootKind(strings.ToUpper(kind)); k {
		case RootUUID, RootPartUUID:
			return Root{Kind: k, Value: strings.ToLower(val)}, nil
		case RootLabel, RootPartLabel:
			return Root{Kind: k, Value: val}, nil
		}
	}
	return Root{}, fmt.Errorf("%q: want UUID=, LABEL=, PARTUUID=, PARTLABEL= or a /dev path", v)
}

// ParseNetroot parses dracut's iSCSI netroot. Errors never quote the credentials.
func ParseNetroot(v string) (*Netroot, error) {
	rest, ok := strings.CutPrefix(v, "iscsi:")
	if !ok {
		return nil, errors.New("want iscsi:[user:pass@][server]:[proto]:[port]:[lun]:target")
	}
	n := &Netroot{}
	// An IQN holds no '@', a password might: the last '@' ends the credentials.
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		cred := strings.Split(rest[:at], ":")
		rest = rest[at+1:]
		switch len(cred) {
		case 2:
			n.User, n.Secret = cred[0], cred[1]
		case 4:
			n.User, n.Secret, n.RevUser, n.RevSecret = cred[0], cred[1], cred[2], cred[3]
		default:
			return nil, fmt.Errorf("credentials: want user:secret or user:secret:ruser:rsecret (%d fields given)", len(cred))
		}
		if n.User == "" || n.Secret == "" || (len(cred) == 4 && (n.RevUser == "" || n.RevSecret == "")) {
			return nil, errors.New("credentials: empty user or secret")
		}
	}
	if strings.HasPrefix(rest, "[") {
		end := strings.Index(rest, "]")
		if end < 0 {
			return nil, errors.New("server: missing ']' after IPv6 address")
		}
		n.Server = rest[1:end]
		rest = rest[end+1:]
		if !strings.HasPrefix(rest, ":") {
			return nil, errors.New("server: want ':' after ']'")
		}
		rest = rest[1:]
	} else {
		var found bool
		n.Server, rest, found = strings.Cut(rest, ":")
		if !found {
			return nil, errors.New("too few fields: want [server]:[proto]:[port]:[lun]:target")
		}
	}
	// proto:port:lun:target, and the target (an IQN) holds colons itself.
	f := strings.SplitN(rest, ":", 4)
	if len(f) < 4 {
		return nil, errors.New("too few fields: want [server]:[proto]:[port]:[lun]:target")
	}
	n.Proto = f[0]
	if n.Proto != "" && n.Proto != "6" {
		return nil, fmt.Errorf("protocol %q: want empty or 6 (TCP)", n.Proto)
	}
	if f[1] != "" {
		p, err := strconv.ParseUint(f[1], 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("port %q: want 1..65535", f[1])
		}
		n.Port = uint16(p)
	}
	if f[2] != "" {
		l, err := strconv.ParseUint(f[2], 10, 14) // SAM flat/peripheral LUNs reach 16383
		if err != nil {
			return nil, fmt.Errorf("lun %q: want 0..16383", f[2])
		}
		n.LUN = l
	}
	n.Target = f[3]
	if n.Target == "" {
		return nil, errors.New("empty target name")
	}
	if n.Server == "" {
		return nil, errors.New("empty server (isboot has no iSCSI discovery without one)")
	}
	return n, nil
}
