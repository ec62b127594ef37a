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
	c := cfg.Config
	c.Logf = logf
	c.ISID = stableISID(c.InitiatorName, c.TargetName)
	s, err := iscsi.Dial(actx, c)
	if err != nil {
		if iscsi.IsPermanent(err) {
			return nil, permanent{err}
		}
		return nil, err
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

// permanent marks an error as ErrPermanent without changing its message.
type permanent struct{ error }

func (p permanent) Is(target error) bool { return target == ErrPermanent }
func (p permanent) Unwrap() error        { return p.error }

type iscsiSession struct{ s *iscsi.Session }

func (i *iscsiSession) LUN() blockdev.Device { return i.s.LUN() }

func (i *iscsiSession) Logout(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- i.s.Close() }()
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
