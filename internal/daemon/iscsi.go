package daemon

import (
	"context"
	"crypto/sha256"
	"strconv"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/status"
	"github.com/isboot/isboot/iscsi"
)

// attemptTimeout bounds one Dial (which itself retries transient failures), so the
// daemon can report each round to PID 1 and the status file.
const attemptTimeout = 20 * time.Second

// DialISCSI logs in with the native initiator. After the login the session
// reconnects by itself, forever, as a root device needs.
func DialISCSI(ctx context.Context, cfg *Config, logf func(string, ...any)) (Session, error) {
	actx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	if len(cfg.Paths) > 1 {
		return dialMultipath(actx, cfg, logf)
	}
	c := cfg.Config
	c.Logf = logf
	c.ISID = stableISID(c.InitiatorName, c.TargetName)
	s, err := iscsi.Dial(actx, c)
	if err != nil {
		return nil, loginError(err)
	}
	return &iscsiSession{s: s}, nil
}

// stableISID derives the session's ISID from the initiator and target names (the
// random format, T=10b, with hash bytes for the random part). Two reasons: a random
// one would come from getrandom(2), which at boot blocks until the kernel's entropy
// pool is ready (1-2 s under QEMU without an RNG device); and the same ISID after a
// crash and reboot lets the target reinstate the old session instead of keeping it.
func stableISID(initiator, target string) [6]byte {
	h := sha256.Sum256([]byte(initiator + "\x00" + target))
	return [6]byte{0x80, h[0], h[1], h[2], 0, 0}
}

// loginError marks a login error that retrying cannot fix as ErrPermanent.
func loginError(err error) error {
	if iscsi.IsPermanent(err) {
		return permanent{err}
	}
	return err
}

// permanent marks an error as ErrPermanent without changing its message.
type permanent struct{ error }

func (p permanent) Is(target error) bool { return target == ErrPermanent }
func (p permanent) Unwrap() error        { return p.error }

type iscsiSession struct{ s *iscsi.Session }

func (i *iscsiSession) LUN() blockdev.Device { return i.s.LUN() }

func (i *iscsiSession) Logout(ctx context.Context) error { return closeWithin(ctx, i.s.Close) }

// closeWithin runs close (a logout), returning early when ctx ends first.
func closeWithin(ctx context.Context, close func() error) error {
	done := make(chan error, 1)
	go func() { done <- close() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (i *iscsiSession) Info() SessionInfo { return ISCSIInfo(i.s) }

func (i *iscsiSession) Idle(ctx context.Context) error { return i.s.Idle(ctx) }

// CapacityChanged tells when the target reports a new capacity (capacityChanges).
func (i *iscsiSession) CapacityChanged() <-chan struct{} { return i.s.CapacityChanged() }

// ISCSIInfo describes a native iSCSI session for the status file: it splits the
// session's parameters into the identity the file shows as its own keys and the
// negotiated keys it lists under net.isboot.session.
func ISCSIInfo(s *iscsi.Session) SessionInfo {
	st := s.Stats()
	state := s.State()
	info := SessionInfo{Reconnects: st.Reconnects, Errors: st.Errors, Recovering: state == "reconnecting", Idle: state == "idle"}
	for _, kv := range s.Params() {
		switch kv.Key {
		case "isid":
			info.ISID = kv.Value
		case "tsih":
			n, _ := strconv.ParseUint(kv.Value, 10, 16)
			info.TSIH = uint16(n)
		case "portal":
			info.Portal = kv.Value
		case "target", "initiator", "lun", "state":
			// already in the status file under net.isboot.*
		default:
			info.Params = append(info.Params, status.KV{Key: kv.Key, Value: kv.Value})
		}
	}
	return info
}

// dialMultipath logs in on every path (iscsi.DialMultipath). Path i's ISID is the
// stable one with i in its last byte: distinct, so that no path's login ends
// another's session, and path 0 keeps the single session's.
func dialMultipath(ctx context.Context, cfg *Config, logf func(string, ...any)) (Session, error) {
	cfgs := make([]iscsi.Config, len(cfg.Paths))
	for i, c := range cfg.Paths {
		c.Logf = logf
		c.ISID = stableISID(c.InitiatorName, c.TargetName)
		c.ISID[5] = byte(i)
		cfgs[i] = c
	}
	m, err := iscsi.DialMultipath(ctx, cfgs)
	if err != nil {
		return nil, loginError(err)
	}
	return &multipathSession{m: m}, nil
}

type multipathSession struct{ m *iscsi.Multipath }

func (s *multipathSession) LUN() blockdev.Device { return s.m }

func (s *multipathSession) Logout(ctx context.Context) error { return closeWithin(ctx, s.m.Close) }

func (s *multipathSession) Idle(ctx context.Context) error { return s.m.Idle(ctx) }

func (s *multipathSession) Info() SessionInfo { return MultipathInfo(s.m) }

// MultipathInfo describes a multipath LUN for the status file: the session keys are
// those of the lowest active path, the counters add up every path's, and each path
// gets its own lines. It is recovering while no path is active.
func MultipathInfo(m *iscsi.Multipath) SessionInfo {
	var info SessionInfo
	if s := m.Primary(); s != nil {
		info = ISCSIInfo(s)
	}
	info.Reconnects, info.Errors, info.Recovering = 0, 0, true
	for _, p := range m.Paths() {
		info.Paths = append(info.Paths, status.Path{Portal: p.Portal, State: string(p.State),
			Reads: p.Reads, Writes: p.Writes, Errors: p.Errors, Failovers: p.Failovers, LastError: p.LastError})
		info.Reconnects += p.Failovers
		info.Errors += p.Errors
		if p.State == iscsi.PathActive {
			info.Recovering = false
		}
		if p.State != iscsi.PathActive && p.LastError != "" {
			info.LastError = p.LastError
		}
	}
	return info
}
