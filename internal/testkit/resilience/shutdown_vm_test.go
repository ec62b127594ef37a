package resilience_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/testkit/debroot"
	"github.com/isboot/isboot/internal/testkit/testenv"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// TestShutdownLogsOut: a systemd root with isboot's systemd-shutdown hook (a link
// to the binary in /usr/lib/systemd/system-shutdown). At poweroff, once
// systemd-shutdown has made the root read-only, the hook has the daemon flush and
// log out: a TCP proxy between the guest and tgtd sees the initiator's last PDU on
// the session's connection be a Logout Request (opcode 0x06), followed by FIN,
// not a connection that just ends. The root is clean and holds what was written.
func TestShutdownLogsOut(t *testing.T) {
	r := newRig(t, 5)
	p := startPDUProxy(t, fmt.Sprintf("127.0.0.1:%d", r.port))
	portal := netip.AddrPortFrom(netip.MustParseAddr(vm.HostAddr), uint16(p.port()))
	hook := `install -m 755 ./isboot /usr/local/sbin/isboot
ln -sf /usr/local/sbin/isboot /usr/lib/systemd/system-shutdown/isboot
echo "RES-SHUTDOWN-WRITE $(date +%s)" > /var/lib/isboot-test/shutdown-write
sync
echo "RES-HOOK-INSTALLED $(ls -l /usr/lib/systemd/system-shutdown/isboot)"
systemctl poweroff
`
	v := r.boot(hook, bootOpts{table: r.table(portal)})
	if _, err := v.WaitFor(context.Background(), 60*time.Second, `RES-HOOK-INSTALLED`); err != nil {
		t.Fatal(err)
	}
	took := r.poweroff(v)
	con := v.Console()
	t.Logf("poweroff took %v", took.Round(100*time.Millisecond))
	// The hook's and the daemon's own lines do not reach this console (systemd
	// runs the hook with no output, and Debian sets console_loglevel 4): what the
	// target saw is the evidence. A failed hook is logged, though.
	if m := regexp.MustCompile(`[^\r\n]*system-shutdown/isboot failed[^\r\n]*`).FindString(con); m != "" {
		t.Errorf("the shutdown hook failed: %s", m)
	}
	checkLogout(t, p)
	if out, err := exec.Command("e2fsck", "-fn", debroot.FSPath(r.disk)).CombinedOutput(); err != nil {
		t.Errorf("e2fsck after poweroff: %v\n%s", err, out)
	}
	out, err := exec.Command("debugfs", "-R", "cat /var/lib/isboot-test/shutdown-write", debroot.FSPath(r.disk)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "RES-SHUTDOWN-WRITE") {
		t.Errorf("the file written before poweroff is not on the target: %v %s", err, out)
	}
}

// pduProxy forwards TCP connections to a target and records, per connection, the
// opcodes of the initiator's PDUs (no digests: the parse assumes none) and how the
// initiator's side ended.
type pduProxy struct {
	t  *testing.T
	l  net.Listener
	to string

	mu    sync.Mutex
	conns []*proxyConn
	wg    sync.WaitGroup
}

type proxyConn struct {
	ops []byte // initiator PDU opcodes, in order
	end string // FIN, or the read error
}

func startPDUProxy(t *testing.T, to string) *pduProxy {
	t.Helper()
	port := testtarget.FreePort(t, portLo, portHi)
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	p := &pduProxy{t: t, l: l, to: to}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() { l.Close(); p.wg.Wait() })
	return p
}

func (p *pduProxy) port() int { return p.l.Addr().(*net.TCPAddr).Port }

func (p *pduProxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.l.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.to)
		if err != nil {
			in.Close()
			continue
		}
		pc := &proxyConn{}
		p.mu.Lock()
		p.conns = append(p.conns, pc)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { // target to initiator: as is
			defer p.wg.Done()
			io.Copy(in, out)
			in.(*net.TCPConn).CloseWrite()
		}()
		go func() {
			defer p.wg.Done()
			defer out.(*net.TCPConn).CloseWrite()
			p.forwardPDUs(in, out, pc)
		}()
	}
}

// forwardPDUs copies the initiator's stream PDU by PDU, noting each opcode.
func (p *pduProxy) forwardPDUs(in, out net.Conn, pc *proxyConn) {
	hdr := make([]byte, 48)
	for {
		if _, err := io.ReadFull(in, hdr); err != nil {
			p.mu.Lock()
			pc.end = "FIN"
			if !errors.Is(err, io.EOF) {
				pc.end = err.Error()
			}
			p.mu.Unlock()
			return
		}
		n := int(hdr[4])*4 + (int(binary.BigEndian.Uint32(hdr[4:8])&0xffffff)+3)&^3
		p.mu.Lock()
		pc.ops = append(pc.ops, hdr[0]&0x3f)
		p.mu.Unlock()
		if _, err := out.Write(hdr); err != nil {
			return
		}
		if _, err := io.CopyN(out, in, int64(n)); err != nil {
			p.mu.Lock()
			pc.end = "cut in a PDU: " + err.Error()
			p.mu.Unlock()
			return
		}
	}
}

func (p *pduProxy) connections() []proxyConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []proxyConn
	for _, c := range p.conns {
		out = append(out, proxyConn{ops: append([]byte(nil), c.ops...), end: c.end})
	}
	return out
}

func opNames(ops []byte) string {
	names := map[byte]string{0x00: "NOP-Out", 0x01: "SCSI Command", 0x02: "Task Management", 0x03: "Login", 0x04: "Text", 0x05: "Data-Out", 0x06: "Logout"}
	var s []string
	for _, o := range ops {
		n, ok := names[o]
		if !ok {
			n = fmt.Sprintf("0x%02x", o)
		}
		s = append(s, n)
	}
	return "[" + strings.Join(s, ", ") + "]"
}

// TestShutdownExitrdLogsOut: the exitrd convention. The root leaves a
// /run/initramfs/shutdown (a busybox script here, with isboot beside it), so
// systemd-shutdown hands the end of the shutdown back to it, with the real root
// moved to /oldroot. It unmounts /oldroot and runs `isboot stop --final`: the
// device is unused now, so the daemon disconnects /dev/nbd0, flushes and logs
// out, and exits. The target sees a Logout Request and then FIN.
func TestShutdownExitrdLogsOut(t *testing.T) {
	r := newRig(t, 6)
	busybox := testenv.LookPath(t, "VM test", "busybox")
	p := startPDUProxy(t, fmt.Sprintf("127.0.0.1:%d", r.port))
	portal := netip.AddrPortFrom(netip.MustParseAddr(vm.HostAddr), uint16(p.port()))
	v := r.boot(exitrdHook, bootOpts{table: r.table(portal), files: map[string]string{"busybox": busybox}})
	if _, err := v.WaitFor(context.Background(), 60*time.Second, `RES-EXITRD-READY`); err != nil {
		t.Fatal(err)
	}
	took := r.poweroff(v)
	con := v.Console()
	t.Logf("poweroff took %v", took.Round(100*time.Millisecond))
	for _, re := range []string{
		`RES-EXITRD poweroff`,
		`RES-EXITRD-NBD-MOUNTS 0`,
		`isboot: daemon \(pid \d+\) stopped: /dev/nbd0 disconnected, logged out`,
		`RES-EXITRD-STOP exit=0`,
	} {
		if m := regexp.MustCompile(re).FindString(con); m == "" {
			t.Errorf("no %q on the console", re)
		} else {
			t.Logf("console: %s", m)
		}
	}
	for _, m := range regexp.MustCompile(`RES-EXITRD-BUSY [^\r\n]*`).FindAllString(con, -1) {
		t.Logf("console: %s", m)
	}
	checkLogout(t, p)
	if out, err := exec.Command("e2fsck", "-fn", debroot.FSPath(r.disk)).CombinedOutput(); err != nil {
		t.Errorf("e2fsck after poweroff: %v\n%s", err, out)
	}
}

// exitrdHook makes a minimal exitrd in /run/initramfs and powers off.
const exitrdHook = `E=/run/initramfs
mkdir -p $E/bin $E/oldroot $E/dev $E/proc $E/sys $E/run
install -m 755 ./busybox $E/bin/busybox
install -m 755 ./isboot $E/bin/isboot
cat > $E/shutdown <<'END'
#!/bin/busybox sh
export PATH=/bin
busybox echo "RES-EXITRD $*"
for m in $(busybox awk '$2 ~ "^/oldroot/" {print $2}' /proc/self/mounts | busybox sort -r); do
	busybox umount "$m" 2>/dev/null || busybox umount -l "$m" || busybox echo "RES-EXITRD-BUSY $m"
done
busybox umount /oldroot || busybox echo "RES-EXITRD-BUSY /oldroot"
busybox echo "RES-EXITRD-NBD-MOUNTS $(busybox grep -c '^/dev/nbd' /proc/self/mounts)"
/bin/isboot stop --final --wait 20s
busybox echo "RES-EXITRD-STOP exit=$?"
busybox sync
busybox poweroff -f
END
chmod 755 $E/shutdown
sync
echo RES-EXITRD-READY
systemctl poweroff
`

// checkLogout checks that the session's last connection ended with a Logout
// Request, then FIN.
func checkLogout(t *testing.T, p *pduProxy) {
	t.Helper()
	conns := p.connections()
	if len(conns) == 0 {
		t.Fatal("the proxy saw no connection")
	}
	last := conns[len(conns)-1]
	tail := opNames(last.ops[max(len(last.ops)-3, 0):])
	t.Logf("the proxy saw %d connection(s); the last: %d initiator PDUs, ending %s, then %s", len(conns), len(last.ops), tail, last.end)
	if n := len(last.ops); n == 0 || last.ops[n-1] != 0x06 || last.end != "FIN" {
		t.Errorf("the session's last connection did not end with a Logout Request and FIN: ... %s, then %s", tail, last.end)
	}
}
