// Package resilience_test proves that a real systemd root served by isboot
// loses no acknowledged write through target faults: each test boots the
// Debian root (internal/debroot) through isboot from tgtd, runs blkverify's
// writer, injects a fault, verifies every fsync'd block in place and after a
// reboot, checks the guest kernel logged no I/O error, and that systemd's
// poweroff leaves a filesystem fsck finds clean.
//
// TestTargetRestartUnderLoad runs in `make test`; the slower faults need
// ISBOOT_LONG=1 (make test-long).
package resilience_test

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTargetRestartUnderLoad: tgtd is killed (SIGKILL, no logout) while the
// guest writes, stays down 5 s, and starts again on the same backing file.
// I/O must stall and resume with nothing lost; then a clean poweroff, a
// clean fsck at the next boot and the same blocks verified again.
func TestTargetRestartUnderLoad(t *testing.T) {
	faultUnderLoad(t, 0, 60*time.Second, 4, func(r *rig) {
		r.tgt.Stop()
		t.Logf("tgtd killed")
		time.Sleep(5 * time.Second)
		r.tgt.Restart()
		t.Logf("tgtd restarted")
	})
}

// TestTargetFrozen60s: tgtd is SIGSTOPped for 60 s under load (the TCP
// connection stays up, nothing answers), then continued.
func TestTargetFrozen60s(t *testing.T) {
	requireLong(t)
	faultUnderLoad(t, 1, 120*time.Second, 30, func(r *rig) {
		r.tgt.Pause()
		t.Logf("tgtd stopped (SIGSTOP)")
		time.Sleep(60 * time.Second)
		r.tgt.Resume()
		t.Logf("tgtd continued (SIGCONT)")
	})
}

// faultUnderLoad boots, starts the writer for dur, injects the fault 20 s in,
// and checks the writer stalled at least minStall seconds (the fault hit),
// lost nothing in place or after a clean poweroff and reboot.
func faultUnderLoad(t *testing.T, slot int, dur time.Duration, minStall float64, inject func(*rig)) {
	r := newRig(t, slot)
	v := r.boot(writeHook(dur, ""), bootOpts{})
	w := r.waitWriter(v, dur, func() {
		time.Sleep(20 * time.Second)
		t0 := v.Elapsed()
		inject(r)
		t.Logf("fault from %v to %v after QEMU start", t0.Round(100*time.Millisecond), v.Elapsed().Round(100*time.Millisecond))
	})
	if w.maxFsync < minStall {
		t.Errorf("longest fsync %.1f s: the fault did not stall the writer %.0f s, so it missed", w.maxFsync, minStall)
	}
	t.Logf("poweroff took %v", r.poweroff(v).Round(100*time.Millisecond))
	r.rebootAndVerify(w, bootOpts{})
}

// TestLowMemoryWriteHeavy: a 256 MiB guest keeps a buffered random-write
// load (fio, dirty pages to flush) and the fsync'ing writer going for five
// minutes: the daemon serving the root must never wait on the root itself.
func TestLowMemoryWriteHeavy(t *testing.T) {
	requireLong(t)
	r := newRig(t, 2)
	const dur = 300 * time.Second
	fio := `fio --name=dirty --filename=` + dataDirFile("dirty") + ` --size=160M --rw=randwrite --bs=64k ` +
		`--ioengine=psync --time_based --runtime=300 --end_fsync=1 --output=/run/fio.log &
echo "RES-MEM $(grep -E 'MemTotal|MemAvailable' /proc/meminfo | tr -s ' \n' ' ')"`
	o := bootOpts{memoryMB: 256}
	end := `wait
grep -E 'WRITE:|err=' /run/fio.log | sed 's/^ */RES-FIO /'
systemctl poweroff`
	v := r.boot(writeHookThen(dur, fio, end), o)
	w := r.waitWriter(v, dur, nil)
	if m, err := v.WaitFor(context.Background(), 120*time.Second, `RES-FIO ([^\r\n]*WRITE:[^\r\n]*)[\r\n]`); err != nil {
		t.Errorf("fio's dirty-page load did not finish: %v", err)
	} else {
		t.Logf("fio buffered load: %s", m[1])
	}
	if w.maxFsync > 60 {
		t.Errorf("an fsync took %.1f s under memory pressure", w.maxFsync)
	}
	r.poweroff(v)
	r.rebootAndVerify(w, o)
}

// TestBootFailsOverToTarget1: the iBFT's boot-selected target0 is an
// address on the guest's subnet where no host answers (connects time out);
// target1 is tgtd with the same LUN. The boot must reach multi-user.target
// through target1, and so must the next boot.
func TestBootFailsOverToTarget1(t *testing.T) {
	requireLong(t)
	r := newRig(t, 3)
	dead := netip.AddrPortFrom(netip.MustParseAddr("10.0.2.99"), 3260)
	o := bootOpts{table: r.table(dead, r.portal())}
	const dur = 20 * time.Second
	v := r.boot(writeHook(dur, ""), o)
	con := v.Console()
	tried := regexp.MustCompile(`isboot: iscsi: connect 10\.0\.2\.99:3260 \(attempt 1\): ([^\r\n]*)`).FindStringSubmatch(con)
	if tried == nil || !strings.Contains(con, fmt.Sprintf("logged in to %s at %s", r.iqn, r.portal())) {
		t.Errorf("the console does not show target0 tried and target1 logged in to")
	} else {
		t.Logf("target0: %s; then logged in through target1", tried[1])
	}
	w := r.waitWriter(v, dur, nil)
	r.poweroff(v)
	r.rebootAndVerify(w, o)
}

// TestDaemonKilledTwice: the serving process (net.isboot.pid) is SIGKILLed
// twice under load, 15 s apart. Its supervisor must start another each time,
// which logs in afresh and takes /dev/nbd0 back with RECONFIGURE within 10 s,
// with no I/O error reaching the filesystem; the status file names the new
// pid. Then an ordinary systemd poweroff (the new process is "@isboot" too, so
// systemd spares it), and every acknowledged block verified after a reboot.
func TestDaemonKilledTwice(t *testing.T) {
	r := newRig(t, 4)
	const dur = 60 * time.Second
	kill := `( for k in 1 2; do
    sleep 15
    pid=$(sed -n 's/^net.isboot.pid: //p' /run/isboot/status)
    t0=$(date +%s.%N)
    kill -9 $pid && echo "RES-DAEMON-KILLED $k pid=$pid"
    for i in $(seq 300); do
      new=$(sed -n 's/^net.isboot.pid: //p' /run/isboot/status)
      st=$(sed -n 's/^net.isboot.state: //p' /run/isboot/status)
      [ -n "$new" ] && [ "$new" != "$pid" ] && [ "$st" = serving ] && break
      sleep 0.1
    done
    echo "RES-DAEMON-BACK $k pid=$new state=$st after=$(echo "$(date +%s.%N) $t0" | awk '{printf "%.1f", $1-$2}')s restarts=$(sed -n 's/^net.isboot.restarts: //p' /run/isboot/status) argv=$(tr '\0' ' ' < /proc/$new/cmdline)"
  done ) &`
	v := r.boot(writeHook(dur, kill), bootOpts{})
	w := r.waitWriter(v, dur, nil)
	con := v.Console()
	back := regexp.MustCompile(`RES-DAEMON-BACK (\d) pid=(\d+) state=(\S*) after=([\d.]+)s restarts=(\d+) argv=(@isboot serve)?`).FindAllStringSubmatch(con, -1)
	if len(back) != 2 {
		t.Fatalf("want two kills and two replacements; console has %d: %q", len(back), regexp.MustCompile(`RES-DAEMON-\S+ [^\r\n]*`).FindAllString(con, -1))
	}
	for i, b := range back {
		after, _ := strconv.ParseFloat(b[4], 64)
		t.Logf("kill %s: pid %s serving again after %.1f s (restarts %s)", b[1], b[2], after, b[5])
		if b[3] != "serving" || after > 10 || b[5] != strconv.Itoa(i+1) || b[6] == "" {
			t.Errorf("kill %s: state %q after %s s, restarts %s, argv %q: want serving within 10 s, restarts %d, @isboot serve", b[1], b[3], b[4], b[5], b[6], i+1)
		}
	}
	if n := strings.Count(con, "isboot: nbd: nbd0 is still configured: taking it over with RECONFIGURE"); n != 2 {
		t.Errorf("%d takeovers with RECONFIGURE on the console, want 2", n)
	}
	t.Logf("the writer's longest fsync across the kills: %.1f s", w.maxFsync)
	t.Logf("poweroff took %v", r.poweroff(v).Round(100*time.Millisecond))
	r.rebootAndVerify(w, bootOpts{})
}

func dataDirFile(name string) string { return "/var/lib/isboot-test/" + name }
