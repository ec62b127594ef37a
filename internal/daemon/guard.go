package daemon

import (
	"context"
	"time"

	"github.com/isboot/isboot/internal/netguard"
	"github.com/isboot/isboot/internal/status"
)

// guard keeps the boot NIC as the boot configured it (cfg.Guard) until ctx ends,
// counting each restore in the status file. A root that flushes the NIC would
// otherwise hang on its own disk; the session's recovery then finds the address
// and the routes back within its next attempt (at most Retry.MaxBackoff, 5 s).
func (d *daemon) guard(ctx context.Context) {
	spec := d.cfg.Guard
	if spec == nil {
		return
	}
	// One line per restore, but a tool fighting the guard in a loop must not
	// bury the console.
	logf := limitLog(d.o.Logf, "network guard", 5, time.Minute, time.Now)
	go func() {
		err := netguard.Watch(ctx, spec, netguard.Options{
			Logf: d.o.Logf,
			Restored: func(r netguard.Restore) {
				logf("network guard: %v", r)
				d.pub.Update(func(st *status.Status) {
					st.Guard.Link = r.Link
					st.Guard.Last = r.String()
					if r.PutBack() {
						st.Guard.Restores++
					}
				})
			},
		})
		if ctx.Err() == nil {
			d.o.Logf("network guard: %v; %s is not guarded", err, spec.Link)
		}
	}()
}
