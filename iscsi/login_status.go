package iscsi

import (
	"errors"
	"fmt"
)

// IsPermanent reports whether err is one that retrying the same login cannot cure:
// a refusal by status (LoginError.Permanent: authentication, unknown target), a key
// the target will not negotiate (NegotiationError), a protocol violation during the
// login. Everything else may heal and is retried: a refused or dropped connection,
// a timeout, the target busy or out of resources (status 0x0301, 0x0302).
//
// It finds any error in err's chain with a Permanent() bool method, as errors.As does.
func IsPermanent(err error) bool {
	var p interface{ Permanent() bool }
	return errors.As(err, &p) && p.Permanent()
}

// permanentError marks an error as permanent (IsPermanent) without changing its text.
type permanentError struct{ error }

func (e permanentError) Permanent() bool { return true }
func (e permanentError) Unwrap() error   { return e.error }

// NegotiationError is an operational key the target will not agree to, e.g. a required
// digest it answers None, Reject or Irrelevant to. The same target answers the same on
// the next login, so it is permanent.
type NegotiationError struct {
	Key      string
	Offered  string
	Answered string // "" when the target never answered the key
}

func (e *NegotiationError) Error() string {
	if e.Answered == "" {
		return fmt.Sprintf("iscsi: target refused %s=%s (no answer)", e.Key, e.Offered)
	}
	return fmt.Sprintf("iscsi: target refused %s=%s (answered %s)", e.Key, e.Offered, e.Answered)
}

func (e *NegotiationError) Permanent() bool { return true }

// LoginError is a login the target refused, with its status class and detail.
type LoginError struct {
	Class, Detail byte
	Target        string
}

func (e *LoginError) Error() string {
	return fmt.Sprintf("iscsi: login to %s: %s (status 0x%02x%02x)", e.Target, loginStatusText(e.Class, e.Detail), e.Class, e.Detail)
}

// Permanent reports whether retrying the same login cannot help.
func (e *LoginError) Permanent() bool {
	return e.Class == 2 && e.Detail != 0x06 // too many connections may clear
}

func loginStatusText(class, detail byte) string {
	switch uint16(class)<<8 | uint16(detail) {
	case 0x0201:
		return "authentication failed"
	case 0x0202:
		return "authorization failed (initiator not allowed)"
	case 0x0203:
		return "target not found"
	case 0x0204:
		return "target removed"
	case 0x0205:
		return "unsupported iSCSI version"
	case 0x0206:
		return "too many connections"
	case 0x0207:
		return "missing parameter"
	case 0x0208:
		return "cannot include in session"
	case 0x0209:
		return "session type not supported"
	case 0x020a:
		return "session does not exist"
	case 0x020b:
		return "invalid request during login"
	case 0x0300:
		return "target error"
	case 0x0301:
		return "service unavailable"
	case 0x0302:
		return "out of resources"
	}
	switch class {
	case 2:
		return "initiator error"
	case 3:
		return "target error"
	}
	return "unexpected login status"
}

// redirectError carries a target's redirect (status class 1) to a new portal.
type redirectError struct {
	addr      string
	permanent bool
}

func (e *redirectError) Error() string {
	kind := "temporarily"
	if e.permanent {
		kind = "permanently"
	}
	return fmt.Sprintf("iscsi: target moved %s to %s", kind, e.addr)
}
