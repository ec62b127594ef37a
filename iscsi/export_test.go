package iscsi

import "testing"

// StartLUNRecorder starts the hostile fake target without a fault, for the external
// tests: it answers any LUN, and luns returns the LUN field of every SCSI command it
// received (each distinct value once).
func StartLUNRecorder(t *testing.T) (addr string, luns func() []LUNAddr) {
	h := startHostile(t, faultNone, false)
	return h.addr(), func() []LUNAddr {
		h.mu.Lock()
		defer h.mu.Unlock()
		return append([]LUNAddr(nil), h.luns...)
	}
}
