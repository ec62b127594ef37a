package iscsi

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha3"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// CHAP algorithms by their CHAP_A number (RFC 7143 §12.1.3, RFC 1994; 6 and 8 from
// the IANA iSCSI registry as Linux LIO implements them).
var chapAlgorithms = map[int]func() hash.Hash{
	5: md5.New,
	6: sha1.New,
	8: func() hash.Hash { return sha3.New256() },
}

// chapOffer is our CHAP_A list, strongest first: the target picks the first it knows.
// 7 (SHA-256 in the registry) is not offered: Linux tgtd takes 7 to mean SHA-1, picks
// it, and then rejects a correct SHA-256 answer, which cost every boot a second login.
// A target that knows SHA-256 (LIO) also knows SHA3-256 and SHA-1, so nothing is lost.
const chapOffer = "8,6,5"

// chapResponse is H(id || secret || challenge) as RFC 1994 defines it.
func chapResponse(alg int, id byte, secret string, challenge []byte) []byte {
	h := chapAlgorithms[alg]()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return h.Sum(nil)
}

// decodeBinary reads a binary value: 0x hex or 0b base64 (RFC 7143 §6.1).
func decodeBinary(key, v string) ([]byte, error) {
	var b []byte
	var err error
	switch {
	case strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X"):
		s := v[2:]
		if len(s)%2 == 1 {
			s = "0" + s
		}
		b, err = hex.DecodeString(s)
	case strings.HasPrefix(v, "0b") || strings.HasPrefix(v, "0B"):
		b, err = base64.StdEncoding.DecodeString(v[2:])
	default:
		return nil, fmt.Errorf("iscsi: %s is neither 0x hex nor 0b base64", key)
	}
	if err != nil || len(b) == 0 {
		return nil, fmt.Errorf("iscsi: %s is not valid binary", key)
	}
	return b, nil
}

func encodeHex(b []byte) string { return "0x" + hex.EncodeToString(b) }

// chapState carries one CHAP exchange in the security stage.
type chapState struct {
	reflected    bool // the target's challenge is one we issued before
	alg          int
	ourID        byte
	ourChallenge []byte
}

// respond answers the target's challenge and, for mutual CHAP, adds ours.
// Secrets go only into the hash, never into an error or a log.
func (c *chapState) respond(cfg *Config, target map[string]string, offer string) ([]KV, error) {
	alg, err := strconv.Atoi(target["CHAP_A"])
	if err != nil || chapAlgorithms[alg] == nil || !strings.Contains(","+offer+",", ","+target["CHAP_A"]+",") {
		return nil, fmt.Errorf("iscsi: target chose CHAP_A=%q, not among offered %s", target["CHAP_A"], offer)
	}
	c.alg = alg
	id, err := parseNumber("CHAP_I", target["CHAP_I"])
	if err != nil || id > 255 {
		return nil, fmt.Errorf("iscsi: target sent bad CHAP_I %q", target["CHAP_I"])
	}
	challenge, err := decodeBinary("CHAP_C", target["CHAP_C"])
	if err != nil {
		return nil, err
	}
	if len(challenge) > 1024 {
		return nil, errors.New("iscsi: target CHAP_C longer than 1024 bytes")
	}
	// A target replaying a challenge we issued wants us to compute the answer it
	// owes us. Our answer is useless to it (the two directions must use different
	// secrets, see withDefaults), and the login is refused once it is sent.
	c.reflected = cfg.RevCHAPUser != "" && ourChallenges.seen(challenge)
	kvs := []KV{
		{"CHAP_N", cfg.CHAPUser},
		{"CHAP_R", encodeHex(chapResponse(alg, byte(id), cfg.CHAPSecret, challenge))},
	}
	if cfg.RevCHAPUser == "" {
		return kvs, nil
	}
	var idb [1]byte
	c.ourChallenge = make([]byte, max(16, chapAlgorithms[alg]().Size()))
	for {
		if _, err := rand.Read(idb[:]); err != nil {
			return nil, err
		}
		if _, err := rand.Read(c.ourChallenge); err != nil {
			return nil, err
		}
		// A target that reflects our challenge back would get us to compute its
		// answer; never send one equal to the challenge we were given.
		if subtle.ConstantTimeCompare(c.ourChallenge, challenge) == 0 {
			break
		}
	}
	c.ourID = idb[0]
	ourChallenges.add(c.ourChallenge)
	return append(kvs, KV{"CHAP_I", strconv.Itoa(int(c.ourID))}, KV{"CHAP_C", encodeHex(c.ourChallenge)}), nil
}

// verifyTarget checks the target's answer to our mutual CHAP challenge in constant time.
func (c *chapState) verifyTarget(cfg *Config, target map[string]string) error {
	if c.reflected {
		return errors.New("iscsi: mutual CHAP: target failed to authenticate (it sent back a challenge we issued)")
	}
	name, resp := target["CHAP_N"], target["CHAP_R"]
	if name == "" || resp == "" {
		return errors.New("iscsi: mutual CHAP: target did not authenticate itself (no CHAP_N/CHAP_R)")
	}
	got, err := decodeBinary("CHAP_R", resp)
	if err != nil {
		return err
	}
	want := chapResponse(c.alg, c.ourID, cfg.RevCHAPSecret, c.ourChallenge)
	nameOK := subtle.ConstantTimeCompare([]byte(name), []byte(cfg.RevCHAPUser))
	respOK := subtle.ConstantTimeCompare(got, want)
	if nameOK&respOK != 1 {
		return errors.New("iscsi: mutual CHAP: target failed to authenticate (wrong name or response)")
	}
	return nil
}

// challengeLog remembers the challenges this process issued recently, so a target
// cannot reflect one of them at us on a later connection.
type challengeLog struct {
	mu   sync.Mutex
	ring [64][]byte
	next int
}

var ourChallenges challengeLog

func (l *challengeLog) add(c []byte) {
	l.mu.Lock()
	l.ring[l.next%len(l.ring)] = slices.Clone(c)
	l.next++
	l.mu.Unlock()
}

func (l *challengeLog) seen(c []byte) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, old := range l.ring {
		if old != nil && subtle.ConstantTimeCompare(old, c) == 1 {
			return true
		}
	}
	return false
}
