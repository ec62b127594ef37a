// Package iscsi is a native iSCSI initiator (RFC 7143) built to carry a root
// filesystem: it logs in (CHAP, mutual CHAP), keeps many commands in flight, and at
// ErrorRecoveryLevel 0 reconnects and reissues every unfinished command so that the
// caller never sees a connection loss.
//
// Shape: a Session owns QueueDepth+1 task slots allocated once. Callers fill a slot
// and hand it to the connection's writer goroutine, which assigns CmdSN inside the
// target's window and batches PDUs into few writes; the reader goroutine puts
// Data-In straight into the caller's buffer and completes the slot. A watchdog
// pings an idle target and aborts late commands. When the connection dies, the
// session logs in again with the same ISID and TSIH 0 (session reinstatement,
// RFC 7143 §6.3.5: the target drops the old session's tasks), checks the LUN is
// still the same disk (VPD 0x83/0x80), and the new writer resends every unfinished
// command in submission order.
package iscsi

import (
	"crypto/rand"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Config describes one session to one target LUN.
type Config struct {
	Portals       []string // "host:port", tried in turn
	TargetName    string
	InitiatorName string // default: a generated iqn
	// LUN is the logical unit number, sent in its single-level SAM form (0-16383).
	// LUNAddr, when not zero, is the 8-byte SAM LUN itself, sent as is (the form the
	// iBFT stores); LUN is then its number, or 0 when it has none (a bus number,
	// several levels).
	LUN           uint64
	LUNAddr       LUNAddr
	CHAPUser      string
	CHAPSecret    string
	RevCHAPUser   string // mutual CHAP: the name the target must answer with
	RevCHAPSecret string
	// HeaderDigest and DataDigest are what the login offers for each digest; the
	// zero value lets the target choose (None preferred). A single value is
	// required: a target that refuses it fails the login for good (NegotiationError).
	HeaderDigest Digest
	DataDigest   Digest
	QueueDepth   int         // commands in flight; default 64
	Retry        RetryPolicy // zero value: retry forever (root device)
	// NoReconnect fails the session, and every command it holds, as soon as its
	// connection is lost, instead of logging in again: a path of a Multipath, whose
	// commands are better reissued at once on another path, which logs in again
	// itself.
	NoReconnect bool `json:",omitempty"`
	// Logf is not sent along when the daemon gets its Config as JSON.
	Logf func(format string, args ...any) `json:"-"`

	// ISID pins the initiator session ID; default random format (T=10b).
	ISID [6]byte
	// NopInterval: after this long without hearing from the target, ping it.
	NopInterval time.Duration // default 5s
	// NopTimeout: the ping must be answered within this, or the connection is dropped.
	NopTimeout time.Duration // default 10s
	// CommandTimeout: a command older than this is aborted and reissued.
	CommandTimeout time.Duration // default 60s
	// LoginTimeout bounds one connect + login.
	LoginTimeout time.Duration // default 15s
	// MaxRecvDataSegmentLength we offer; default 256 KiB.
	MaxRecvDataSegmentLength int
}

// String describes the session for logs. It never shows a secret, so printing a Config
// (or anything embedding one) with %v is safe.
func (c Config) String() string {
	auth := "no CHAP"
	switch {
	case c.RevCHAPUser != "":
		auth = fmt.Sprintf("mutual CHAP as %q, target %q", c.CHAPUser, c.RevCHAPUser)
	case c.CHAPUser != "":
		auth = fmt.Sprintf("CHAP as %q", c.CHAPUser)
	}
	for _, d := range []struct {
		key string
		d   Digest
	}{{"HeaderDigest", c.HeaderDigest}, {"DataDigest", c.DataDigest}} {
		if d.d != DigestAuto {
			auth += ", " + d.key + "=" + d.d.offer()
		}
	}
	return fmt.Sprintf("%s LUN %s at %s (initiator %s, %s)", c.TargetName, c.LUNString(), strings.Join(c.Portals, ","), c.InitiatorName, auth)
}

// lunAddr is the address commands carry: LUNAddr, or the single-level form of LUN.
func (c *Config) lunAddr() (LUNAddr, error) {
	if c.LUNAddr == (LUNAddr{}) {
		return SingleLevelLUN(c.LUN)
	}
	if n, ok := c.LUNAddr.Number(); ok && c.LUN != 0 && c.LUN != n {
		return c.LUNAddr, fmt.Errorf("LUN %d, but the 8-byte LUN %x is LUN %d", c.LUN, c.LUNAddr[:], n)
	}
	return c.LUNAddr, nil
}

// LUNString names the LUN for logs and the status file: its number, or its 8 bytes
// in hex when it has no number (LUNAddr.String).
func (c *Config) LUNString() string {
	a, err := c.lunAddr()
	if err != nil {
		return strconv.FormatUint(c.LUN, 10)
	}
	return a.String()
}

// Digest is an offer for HeaderDigest or DataDigest (RFC 7143 §13.1): the digests
// the initiator accepts, in order of preference, as open-iscsi spells its node
// settings (node.conn[0].iscsi.HeaderDigest = CRC32C,None).
type Digest string

const (
	// DigestAuto offers None,CRC32C: the target decides, None preferred.
	DigestAuto Digest = ""
	// DigestNone and DigestCRC32C are required: the login fails, for good, when the
	// target will not use that one.
	DigestNone   Digest = "None"
	DigestCRC32C Digest = "CRC32C"
	// DigestPreferCRC32C offers CRC32C,None: CRC32C where the target agrees.
	DigestPreferCRC32C Digest = "CRC32C,None"
)

// ParseDigest reads a digest offer, case-insensitively: none, crc32c, or a list of
// both in order of preference (crc32c,none). The list none,crc32c is DigestAuto.
func ParseDigest(s string) (Digest, error) {
	switch strings.ToLower(strings.ReplaceAll(s, " ", "")) {
	case "none":
		return DigestNone, nil
	case "crc32c":
		return DigestCRC32C, nil
	case "crc32c,none":
		return DigestPreferCRC32C, nil
	case "none,crc32c":
		return DigestAuto, nil
	}
	return "", fmt.Errorf("digest %q: want None, CRC32C, CRC32C,None or None,CRC32C", s)
}

// offer is the value sent in the login.
func (d Digest) offer() string {
	if d == DigestAuto {
		return "None,CRC32C"
	}
	return string(d)
}

// Required reports whether the offer leaves the target no choice.
func (d Digest) Required() bool { return d == DigestNone || d == DigestCRC32C }

// RetryPolicy says how long reconnecting goes on after a connection is lost.
// The zero value retries forever, as a root device must.
type RetryPolicy struct {
	MaxAttempts    int           // 0: unlimited
	MaxElapsed     time.Duration // 0: unlimited
	InitialBackoff time.Duration // default 100ms
	MaxBackoff     time.Duration // default 5s
}

func (c *Config) withDefaults() (Config, error) {
	cfg := *c
	cfg.Portals = slices.Clone(c.Portals) // a permanent redirect rewrites our copy
	if len(cfg.Portals) == 0 {
		return cfg, fmt.Errorf("iscsi: config: no portal")
	}
	if cfg.TargetName == "" {
		return cfg, fmt.Errorf("iscsi: config: no target name")
	}
	if (cfg.CHAPUser == "") != (cfg.CHAPSecret == "") {
		return cfg, fmt.Errorf("iscsi: config: CHAP needs both user and secret")
	}
	if cfg.RevCHAPUser != "" && (cfg.CHAPUser == "" || cfg.RevCHAPSecret == "") {
		return cfg, fmt.Errorf("iscsi: config: mutual CHAP needs CHAP and the reverse secret")
	}
	if cfg.RevCHAPUser != "" && cfg.RevCHAPSecret == cfg.CHAPSecret {
		// RFC 7143 §12.1.3: the two directions must not share a secret.
		return cfg, fmt.Errorf("iscsi: config: mutual CHAP secret equals the CHAP secret")
	}
	for _, d := range []Digest{cfg.HeaderDigest, cfg.DataDigest} {
		if _, err := ParseDigest(d.offer()); err != nil {
			return cfg, fmt.Errorf("iscsi: config: %w", err)
		}
	}
	addr, err := cfg.lunAddr()
	if err != nil {
		return cfg, fmt.Errorf("iscsi: config: %w", err)
	}
	cfg.LUNAddr = addr
	cfg.LUN, _ = addr.Number()
	if cfg.InitiatorName == "" {
		cfg.InitiatorName = "iqn.2026-01.org.isboot:initiator"
	}
	if cfg.QueueDepth <= 0 {
		cfg.QueueDepth = 64
	}
	if cfg.QueueDepth > 4096 {
		cfg.QueueDepth = 4096
	}
	if cfg.ISID == ([6]byte{}) {
		cfg.ISID[0] = 0x80 // T=10b: random format (RFC 7143 §11.12.5)
		rand.Read(cfg.ISID[1:4])
	}
	if cfg.NopInterval <= 0 {
		cfg.NopInterval = 5 * time.Second
	}
	if cfg.NopTimeout <= 0 {
		cfg.NopTimeout = 10 * time.Second
	}
	if cfg.CommandTimeout <= 0 {
		cfg.CommandTimeout = 60 * time.Second
	}
	if cfg.LoginTimeout <= 0 {
		cfg.LoginTimeout = 15 * time.Second
	}
	if cfg.MaxRecvDataSegmentLength <= 0 {
		cfg.MaxRecvDataSegmentLength = 256 << 10
	}
	if cfg.Retry.InitialBackoff <= 0 {
		cfg.Retry.InitialBackoff = 100 * time.Millisecond
	}
	if cfg.Retry.MaxBackoff <= 0 {
		cfg.Retry.MaxBackoff = 5 * time.Second
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	return cfg, nil
}
