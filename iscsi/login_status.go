package iscsi

import "fmt"

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
