// Package status writes and reads /run/isboot/status: the daemon's state as sysctl-style
// "key: value" lines, rewritten atomically so readers never see half a file.
//
// The writer works relative to an open directory, because the daemon keeps writing
// after switch_root has moved /run out from under its old root: a path would then
// point into the emptied initramfs, the directory handle still points at the real /run.
package status

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultDir is where the boot writes the status file; DefaultPath is the file.
const (
	DefaultDir  = "/run/isboot"
	DefaultPath = DefaultDir + "/status"
	fileName    = "status"
)

// State is the daemon's phase.
type State string

const (
	Discovering  State = "discovering"
	Configuring  State = "configuring"
	LoggingIn    State = "logging-in"
	Serving      State = "serving"
	Reconnecting State = "reconnecting"
	LoggedOut    State = "logged-out" // at shutdown, still attached: a read logs in again
	Failed       State = "failed"
)

// Status is everything the file shows. It has no field for a secret, and Lines drops
// any extra key that names one.
type Status struct {
	Version string
	PID     int // the serving process
	// Supervisor is the pid of the process that restarts the serving one when it
	// dies (0: none, as under `isboot serve`); Restarts counts those restarts.
	Supervisor int
	Restarts   uint64
	Device     string // "nbd0"
	NIC        string // "eth0"
	Debug      int
	State      State
	Target     string // target IQN
	Portal     string // "10.0.2.2:3260"
	LUN        uint64
	// LUNName, when set, names the LUN in the file instead of LUN: iscsi.LUNAddr's
	// String, the 8-byte SAM LUN in hex for one without a number (a bus number,
	// several levels).
	LUNName   string
	Disk      Disk  // what the LUN says it is
	Size      int64 // bytes
	LastError string
	Session   Session
	// ReadAhead says the device is served with read-ahead (net.isboot.readahead.*).
	ReadAhead bool
	Counters  Counters
	Guard     Guard
	DHCP      *DHCP  // the lease the daemon keeps renewing; nil: none
	Paths     []Path // the paths of a multipath LUN; nil for one session
	IBFT      []KV   // hw.ibft.* lines as the ibft package prints them
}

// DHCP is the boot NIC's DHCP lease, which the daemon renews for the life of the
// system (the net.isboot.dhcp.* keys).
type DHCP struct {
	Address   string // the leased address as configured, "10.0.2.15/24"
	Server    string // the DHCPv4 server, or "DUID <hex>" for DHCPv6
	State     string // bound, renewing, rebinding, expired (the address is kept)
	LeaseTime time.Duration
	Obtained  time.Time // last acknowledged
	Expires   time.Time
	Renewals  uint64 // acknowledged renewals by this serving process
	Failures  uint64 // attempts without an acknowledgement
	LastError string
}

// Guard is the daemon's watch over the boot NIC (internal/netguard).
type Guard struct {
	Link     string // the link guarded; "": no guard (its keys are left out)
	Restores uint64 // passes that put back the link, its address or a route
	Last     string // what the last of them put back (or failed to)
}

// Disk is the LUN as it describes itself (standard INQUIRY, VPD pages 0x80 and
// 0x83), as FreeBSD's `camcontrol inquiry` shows it; "" where the LUN says nothing,
// or the device is no SCSI LUN.
type Disk struct {
	Vendor, Product, Revision string
	Serial                    string // unit serial number
	ID                        string // device identifier: naa.<hex>, eui.<hex> or t10.<text>
	BlockSize                 int
}

// Session is the logged-in iSCSI session.
type Session struct {
	ISID   string // 12 hex digits
	TSIH   uint16
	Params []KV // every negotiated key, e.g. MaxRecvDataSegmentLength: 262144
}

// Path is one session of a multipath LUN (iscsi.Multipath): its portal, its state
// (connecting, active, failed, refused) and what it carried.
type Path struct {
	Portal    string
	State     string
	Reads     uint64 // read commands completed on this path
	Writes    uint64 // write commands completed on this path
	Errors    uint64 // commands failed on it (reissued on another path, or reported)
	Failovers uint64 // times it was lost and its commands moved to the others
	LastError string // why it last failed or was refused ("" if never)
}

// Counters accumulate over the daemon's life.
type Counters struct {
	Reconnects uint64
	Commands   uint64
	ReadBytes  uint64
	WriteBytes uint64
	// ZeroWrites are writes of zeroes sent to the target as WRITE SAME.
	ZeroWrites uint64
	// MergedReads are client reads sent to the target within the read before them
	// (adjacent reads merged into one command).
	MergedReads uint64
	Errors      uint64
	// Reads fetched ahead of a sequential reader, reads served from them, and those
	// dropped unread (blockdev.ReadAhead); shown when Status.ReadAhead.
	ReadAheadFetched, ReadAheadHits, ReadAheadWasted uint64
}

// KV is one line of the file.
type KV struct {
	Key, Value string
}

// isSecret reports keys that must never reach the file (CHAP secrets, whatever their
// exact spelling in the source they come from).
func isSecret(key string) bool {
	k := strings.ToLower(key)
	return strings.Contains(k, "secret") || strings.Contains(k, "password")
}

// Lines renders s in the file's order.
func (s *Status) Lines() []KV {
	p := "net.isboot."
	kv := []KV{
		{p + "version", s.Version},
		{p + "pid", strconv.Itoa(s.PID)},
	}
	if s.Supervisor != 0 {
		kv = append(kv, KV{p + "supervisor_pid", strconv.Itoa(s.Supervisor)},
			KV{p + "restarts", strconv.FormatUint(s.Restarts, 10)})
	}
	kv = append(kv, []KV{
		{p + "state", string(s.State)},
		{p + "device", s.Device},
		{p + "nic", s.NIC},
		{p + "debug", strconv.Itoa(s.Debug)},
		{p + "target", s.Target},
		{p + "portal", s.Portal},
		{p + "lun", cmp.Or(s.LUNName, strconv.FormatUint(s.LUN, 10))},
		{p + "lun.vendor", s.Disk.Vendor},
		{p + "lun.product", s.Disk.Product},
		{p + "lun.revision", s.Disk.Revision},
		{p + "lun.serial", s.Disk.Serial},
		{p + "lun.id", s.Disk.ID},
		{p + "lun.block_size", strconv.Itoa(s.Disk.BlockSize)},
		{p + "size", strconv.FormatInt(s.Size, 10)},
		{p + "last_error", s.LastError},
		{p + "session.isid", s.Session.ISID},
		{p + "session.tsih", strconv.Itoa(int(s.Session.TSIH))},
	}...)
	for _, e := range s.Session.Params {
		kv = append(kv, KV{p + "session." + e.Key, e.Value})
	}
	kv = append(kv,
		KV{p + "reconnects", strconv.FormatUint(s.Counters.Reconnects, 10)},
		KV{p + "commands", strconv.FormatUint(s.Counters.Commands, 10)},
		KV{p + "read_bytes", strconv.FormatUint(s.Counters.ReadBytes, 10)},
		KV{p + "write_bytes", strconv.FormatUint(s.Counters.WriteBytes, 10)},
		KV{p + "zero_writes", strconv.FormatUint(s.Counters.ZeroWrites, 10)},
		KV{p + "merged_reads", strconv.FormatUint(s.Counters.MergedReads, 10)},
		KV{p + "errors", strconv.FormatUint(s.Counters.Errors, 10)},
	)
	if s.ReadAhead {
		kv = append(kv,
			KV{p + "readahead.fetched", strconv.FormatUint(s.Counters.ReadAheadFetched, 10)},
			KV{p + "readahead.hits", strconv.FormatUint(s.Counters.ReadAheadHits, 10)},
			KV{p + "readahead.wasted", strconv.FormatUint(s.Counters.ReadAheadWasted, 10)})
	}
	if s.Guard.Link != "" {
		kv = append(kv, KV{p + "guard.link", s.Guard.Link},
			KV{p + "guard.restores", strconv.FormatUint(s.Guard.Restores, 10)},
			KV{p + "guard.last", s.Guard.Last})
	}
	if d := s.DHCP; d != nil {
		q := p + "dhcp."
		// An unconfirmed lease (the firmware's) has no times yet: say none.
		leaseTime, obtained, expires := "", "", ""
		if d.LeaseTime > 0 {
			leaseTime = strconv.FormatInt(int64(d.LeaseTime/time.Second), 10)
			obtained, expires = d.Obtained.UTC().Format(time.RFC3339), d.Expires.UTC().Format(time.RFC3339)
		}
		kv = append(kv,
			KV{q + "address", d.Address},
			KV{q + "server", d.Server},
			KV{q + "state", d.State},
			KV{q + "lease_time", leaseTime},
			KV{q + "lease_obtained", obtained},
			KV{q + "lease_expires", expires},
			KV{q + "renewals", strconv.FormatUint(d.Renewals, 10)},
			KV{q + "failures", strconv.FormatUint(d.Failures, 10)},
			KV{q + "last_error", d.LastError},
		)
	}
	if len(s.Paths) > 0 {
		kv = append(kv, KV{p + "paths", strconv.Itoa(len(s.Paths))})
	}
	for i, pa := range s.Paths {
		q := p + "path." + strconv.Itoa(i) + "."
		kv = append(kv,
			KV{q + "portal", pa.Portal},
			KV{q + "state", pa.State},
			KV{q + "reads", strconv.FormatUint(pa.Reads, 10)},
			KV{q + "writes", strconv.FormatUint(pa.Writes, 10)},
			KV{q + "errors", strconv.FormatUint(pa.Errors, 10)},
			KV{q + "failovers", strconv.FormatUint(pa.Failovers, 10)},
			KV{q + "last_error", pa.LastError},
		)
	}
	kv = append(kv, s.IBFT...)
	out := kv[:0]
	for _, e := range kv {
		if !isSecret(e.Key) {
			out = append(out, e)
		}
	}
	return out
}

// Marshal renders s as the file's bytes. The daemon rewrites the file every second
// while its counters move, on the boot's one emulated CPU too: so no fmt and no
// replacer built per call.
func (s *Status) Marshal() []byte {
	lines := s.Lines()
	n := 0
	for _, e := range lines {
		n += len(e.Key) + len(e.Value) + 3
	}
	b := make([]byte, 0, n)
	for _, e := range lines {
		b = append(b, e.Key...)
		b = append(b, ": "...)
		v := e.Value
		if strings.ContainsAny(v, "\n\r") {
			v = oneLine.Replace(v) // a value never spans lines, whatever an error message held
		}
		b = append(b, v...)
		b = append(b, '\n')
	}
	return b
}

var oneLine = strings.NewReplacer("\n", " ", "\r", " ")

// Writer rewrites one status file.
type Writer struct {
	dir  *os.File
	name string
}

// NewWriter creates dir if needed and holds it open, to write the file "status" in it.
func NewWriter(dir string) (*Writer, error) {
	return Create(filepath.Join(dir, fileName))
}

// Create writes the status file at path (creating its directory if needed), holding
// the directory open.
func Create(path string) (*Writer, error) {
	dir, name := filepath.Split(path)
	if name == "" || name == "." || name == ".." {
		return nil, fmt.Errorf("status: %q names no file", path)
	}
	if dir == "" {
		dir = "."
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	d, err := os.OpenFile(dir, unix.O_DIRECTORY|os.O_RDONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	return &Writer{dir: d, name: name}, nil
}

// Path is the file written.
func (w *Writer) Path() string { return filepath.Join(w.dir.Name(), w.name) }

// Write replaces the file: a temporary file renamed over the old one.
func (w *Writer) Write(s *Status) error {
	tmp := "." + w.name + ".tmp"
	dfd := int(w.dir.Fd())
	fd, err := unix.Openat(dfd, tmp, unix.O_CREAT|unix.O_WRONLY|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("status: create %s/%s: %w", w.dir.Name(), tmp, err)
	}
	werr := writeAll(fd, s.Marshal())
	cerr := unix.Close(fd)
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("status: write %s/%s: %w", w.dir.Name(), tmp, err)
	}
	if err := unix.Renameat(dfd, tmp, dfd, w.name); err != nil {
		return fmt.Errorf("status: rename to %s: %w", w.Path(), err)
	}
	return nil
}

// writeAll writes b to the regular file fd (no os.File: that would try the poller
// first, a system call for nothing).
func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// Close releases the directory.
func (w *Writer) Close() error { return w.dir.Close() }

// Parse reads "key: value" lines. Blank lines and lines starting with '#' are skipped;
// any other line without ": " is an error naming its line number.
func Parse(r io.Reader) ([]KV, error) {
	var kv []KV
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			return nil, fmt.Errorf("status: line %d: want \"key: value\", got %q", n, line)
		}
		kv = append(kv, KV{k, strings.TrimPrefix(v, " ")})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	return kv, nil
}

// ReadFile parses the status file at path.
func ReadFile(path string) ([]KV, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	kv, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return kv, nil
}

// Value returns the value of key, "" when kv has none.
func Value(kv []KV, key string) string {
	for _, e := range kv {
		if e.Key == key {
			return e.Value
		}
	}
	return ""
}

// JSON renders lines as one flat object, keys in file order, values as strings.
func JSON(kv []KV) []byte {
	var b bytes.Buffer
	b.WriteString("{")
	for i, e := range kv {
		if i > 0 {
			b.WriteString(",")
		}
		k, _ := json.Marshal(e.Key)
		v, _ := json.Marshal(e.Value)
		fmt.Fprintf(&b, "\n  %s: %s", k, v)
	}
	b.WriteString("\n}\n")
	return b.Bytes()
}
