package daemon

// The session's last moments, and a LUN that changes size.

import (
	"context"
	"syscall"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/status"
)

// FinalSignal asks the serving process for the shutdown's last word (`isboot stop
// --final`, run by systemd-shutdown's hook or an exitrd once the root is read-only
// or unmounted): see final.
var FinalSignal = syscall.SIGUSR1

// final ends the session at the end of a shutdown, so that the target sees a
// Logout rather than a connection that vanishes when the machine powers off. It
// reports true when nothing uses the device any more (the root was unmounted, as
// in an exitrd): then the caller stops for good (disconnect, flush, logout).
// Otherwise the root is still mounted, read-only by now: the LUN is flushed and
// the session logged out, and the device stays attached; a read the kernel still
// makes logs in again.
func (d *daemon) final(sess Session, att Attachment) (stop bool) {
	dev := att.Device()
	if d.o.InUse == nil || !d.o.InUse(dev) {
		d.o.Logf("shutdown: /dev/%s is no longer in use: stopping", dev)
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Now()
	if err := sess.LUN().Flush(); err != nil {
		d.o.Logf("shutdown: flush: %v", err)
	}
	if err := sess.Idle(ctx); err != nil {
		d.o.Logf("shutdown: logout: %v", err)
		return false
	}
	d.pub.Update(func(st *status.Status) { st.State = status.LoggedOut })
	d.o.Logf("shutdown: flushed and logged out in %v; /dev/%s stays attached (a read now logs in again)",
		time.Since(t0).Round(time.Millisecond), dev)
	return false
}

// capacityChanges is the session's capacity-change signal, or nil (never) when the
// session cannot tell.
func capacityChanges(sess Session) <-chan struct{} {
	if c, ok := sess.(interface{ CapacityChanged() <-chan struct{} }); ok {
		return c.CapacityChanged()
	}
	return nil
}

// resize follows a LUN whose capacity changed: it reads the new one and gives it to
// the kernel's device (RECONFIGURE with the new size, Linux 5.3 and later). A
// filesystem on it does not grow by itself (resize2fs, xfs_growfs).
func (d *daemon) resize(lun blockdev.Device, att Attachment) {
	r, ok := lun.(interface{ Refresh() (int64, error) })
	if !ok {
		return
	}
	old := d.pub.Status().Size
	size, err := r.Refresh()
	if err != nil {
		d.o.Logf("capacity change: %v", err)
		return
	}
	if size == old {
		return
	}
	if err := att.Resize(size); err != nil {
		d.o.Logf("capacity change: the LUN has %d bytes (was %d), but /dev/%s keeps its size: %v", size, old, att.Device(), err)
		return
	}
	d.pub.Update(func(st *status.Status) { st.Size = size })
	d.o.Logf("capacity change: /dev/%s is now %d MiB (was %d MiB)", att.Device(), size>>20, old>>20)
}
