package bootplan

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
)

// initiatorPrefix starts the initiator names isboot makes up.
const initiatorPrefix = "iqn.2026-01.org.isboot:"

// SystemUUID reads the machine's SMBIOS system UUID; tests replace it.
var SystemUUID = func() string {
	b, err := os.ReadFile("/sys/class/dmi/id/product_uuid")
	if err != nil {
		return ""
	}
	return strings.ToLower(strings.TrimSpace(string(b)))
}

// GeneratedInitiator names the initiator of a boot that has neither an iBFT nor
// rd.iscsi.initiator=: iqn.2026-01.org.isboot:uuid.<SMBIOS system UUID>, the same at
// every boot of the machine (so a target's ACL can name it), or, when the firmware
// has no usable UUID (none, or all zeros or ones, as QEMU without -uuid), a random
// iqn.2026-01.org.isboot:random.<16 hex digits>. how says which, for the log.
func GeneratedInitiator() (name, how string) {
	u := strings.ToLower(SystemUUID())
	if trimmed := strings.Trim(u, "0-"); u != "" && trimmed != "" && strings.Trim(u, "f-") != "" {
		return initiatorPrefix + "uuid." + u, "from the SMBIOS system UUID"
	}
	var b [8]byte
	rand.Read(b[:])
	return initiatorPrefix + "random." + hex.EncodeToString(b[:]), "random: the firmware has no system UUID"
}
