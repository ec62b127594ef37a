package nbd

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The kernel's nbd generic netlink interface, from include/uapi/linux/nbd-netlink.h and
// nbd.h (unchanged from Linux 4.12 to 6.1 and later).
const (
	genlFamily  = "nbd"
	genlVersion = 1
	genlMcGroup = "nbd_mc_group"

	nbdCmdConnect     = 1
	nbdCmdDisconnect  = 2
	nbdCmdReconfigure = 3
	nbdCmdLinkDead    = 4
	nbdCmdStatus      = 5

	nbdAttrIndex           = 1 // u32
	nbdAttrSizeBytes       = 2 // u64
	nbdAttrBlockSizeBytes  = 3 // u64
	nbdAttrTimeout         = 4 // u64, seconds
	nbdAttrServerFlags     = 5 // u64
	nbdAttrClientFlags     = 6 // u64
	nbdAttrSockets         = 7 // nested NBD_SOCK_ITEM
	nbdAttrDeadConnTimeout = 8 // u64, seconds
	nbdAttrDeviceList      = 9 // nested NBD_DEVICE_ITEM

	nbdSockItem = 1
	nbdSockFD   = 1 // u32

	nbdDeviceItem      = 1
	nbdDeviceIndex     = 1 // u32
	nbdDeviceConnected = 2 // u8

	// Client flags. Neither belongs on a root device: the first deletes the device
	// when the last socket goes, the second disconnects when the last opener closes.
	cflagDestroyOnDisconnect = 1 << 0
	cflagDisconnectOnClose   = 1 << 1
)

// KernelConfig is what NBD_CMD_CONNECT tells the kernel about a device.
type KernelConfig struct {
	// Index of /dev/nbdN, or -1 for the first free one.
	Index     int
	Size      int64
	BlockSize int
	// ServerFlags are the transmission flags (Server.TransmissionFlags).
	ServerFlags uint16
	// Timeout is the per-request timeout. 0 leaves requests waiting forever on a single
	// connection (with several, the kernel retries a stuck request elsewhere after 30 s).
	Timeout time.Duration
	// DeadConnTimeout is how long requests wait for RECONFIGURE once every socket died.
	DeadConnTimeout time.Duration
	// Off for a root device, which must survive its server (see KernelConfig docs).
	DestroyOnDisconnect, DisconnectOnClose bool
}

// genl speaks the kernel's "nbd" generic netlink family.
type genl struct {
	family  uint16
	mcGroup uint32
}

func openGenl() (*genl, error) {
	f, err := netlink.GenlFamilyGet(genlFamily)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("nbd: generic netlink family %q not found (is the nbd module loaded?)", genlFamily)
		}
		return nil, fmt.Errorf("nbd: look up generic netlink family %q: %w", genlFamily, err)
	}
	g := &genl{family: f.ID}
	for _, grp := range f.Groups {
		if grp.Name == genlMcGroup {
			g.mcGroup = grp.ID
		}
	}
	if g.mcGroup == 0 {
		return nil, fmt.Errorf("nbd: family %q has no multicast group %q", genlFamily, genlMcGroup)
	}
	return g, nil
}

func (g *genl) request(cmd uint8) *nl.NetlinkRequest {
	// NLM_F_ACK: DISCONNECT and RECONFIGURE send nothing else to wait for.
	req := nl.NewNetlinkRequest(int(g.family), unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: cmd, Version: genlVersion})
	return req
}

func u32(v uint32) []byte { return nl.Uint32Attr(v) }
func u64(v uint64) []byte { return nl.Uint64Attr(v) }

func sockets(fds []int) *nl.RtAttr {
	list := nl.NewRtAttr(nbdAttrSockets|unix.NLA_F_NESTED, nil)
	for _, fd := range fds {
		item := list.AddRtAttr(nbdSockItem|unix.NLA_F_NESTED, nil)
		item.AddRtAttr(nbdSockFD, u32(uint32(fd)))
	}
	return list
}

func seconds(d time.Duration) uint64 { return uint64((d + time.Second - 1) / time.Second) }

// connect configures a device with the given kernel-side socket fds and returns its index.
func (g *genl) connect(cfg KernelConfig, fds []int) (int, error) {
	req := g.request(nbdCmdConnect)
	if cfg.Index >= 0 {
		req.AddData(nl.NewRtAttr(nbdAttrIndex, u32(uint32(cfg.Index))))
	}
	req.AddData(nl.NewRtAttr(nbdAttrSizeBytes, u64(uint64(cfg.Size))))
	req.AddData(nl.NewRtAttr(nbdAttrBlockSizeBytes, u64(uint64(cfg.BlockSize))))
	req.AddData(nl.NewRtAttr(nbdAttrServerFlags, u64(uint64(cfg.ServerFlags))))
	req.AddData(nl.NewRtAttr(nbdAttrTimeout, u64(seconds(cfg.Timeout))))
	if cfg.DeadConnTimeout > 0 {
		req.AddData(nl.NewRtAttr(nbdAttrDeadConnTimeout, u64(seconds(cfg.DeadConnTimeout))))
	}
	var cflags uint64
	if cfg.DestroyOnDisconnect {
		cflags |= cflagDestroyOnDisconnect
	}
	if cfg.DisconnectOnClose {
		cflags |= cflagDisconnectOnClose
	}
	req.AddData(nl.NewRtAttr(nbdAttrClientFlags, u64(cflags)))
	req.AddData(sockets(fds))
	msgs, err := req.Execute(unix.NETLINK_GENERIC, g.family)
	if err != nil {
		return -1, fmt.Errorf("nbd: NBD_CMD_CONNECT%s: %w", indexName(cfg.Index), err)
	}
	for _, m := range msgs {
		attrs, err := nl.ParseRouteAttr(m[nl.SizeofGenlmsg:])
		if err != nil {
			return -1, fmt.Errorf("nbd: NBD_CMD_CONNECT reply: %w", err)
		}
		for _, a := range attrs {
			if a.Attr.Type == nbdAttrIndex && len(a.Value) == 4 {
				return int(nl.NativeEndian().Uint32(a.Value)), nil
			}
		}
	}
	return -1, fmt.Errorf("nbd: NBD_CMD_CONNECT reply carries no index")
}

func indexName(i int) string {
	if i < 0 {
		return ""
	}
	return fmt.Sprintf(" nbd%d", i)
}

// reconfigure hands fresh sockets to a connected device, and sets its timeouts when
// cfg is not nil. The kernel swaps each socket for one it has marked dead and silently
// drops the rest, so callers learn which were taken by watching for EOF on their ends.
func (g *genl) reconfigure(index int, cfg *KernelConfig, fds []int) error {
	req := g.request(nbdCmdReconfigure)
	req.AddData(nl.NewRtAttr(nbdAttrIndex, u32(uint32(index))))
	if cfg != nil {
		req.AddData(nl.NewRtAttr(nbdAttrTimeout, u64(seconds(cfg.Timeout))))
		if cfg.DeadConnTimeout > 0 {
			req.AddData(nl.NewRtAttr(nbdAttrDeadConnTimeout, u64(seconds(cfg.DeadConnTimeout))))
		}
	}
	if len(fds) > 0 {
		req.AddData(sockets(fds))
	}
	if _, err := req.Execute(unix.NETLINK_GENERIC, g.family); err != nil {
		return fmt.Errorf("nbd: NBD_CMD_RECONFIGURE nbd%d: %w", index, err)
	}
	return nil
}

// resize gives the device a new size (NBD_CMD_RECONFIGURE with the size attributes:
// Linux 5.3 and later; older kernels ignore them).
func (g *genl) resize(index int, size int64, blockSize int) error {
	req := g.request(nbdCmdReconfigure)
	req.AddData(nl.NewRtAttr(nbdAttrIndex, u32(uint32(index))))
	req.AddData(nl.NewRtAttr(nbdAttrSizeBytes, u64(uint64(size))))
	req.AddData(nl.NewRtAttr(nbdAttrBlockSizeBytes, u64(uint64(blockSize))))
	if _, err := req.Execute(unix.NETLINK_GENERIC, g.family); err != nil {
		return fmt.Errorf("nbd: NBD_CMD_RECONFIGURE nbd%d size %d: %w", index, size, err)
	}
	return nil
}

func (g *genl) disconnect(index int) error {
	req := g.request(nbdCmdDisconnect)
	req.AddData(nl.NewRtAttr(nbdAttrIndex, u32(uint32(index))))
	if _, err := req.Execute(unix.NETLINK_GENERIC, g.family); err != nil {
		return fmt.Errorf("nbd: NBD_CMD_DISCONNECT nbd%d: %w", index, err)
	}
	return nil
}

// DeviceStatus is one entry of NBD_CMD_STATUS.
type DeviceStatus struct {
	Index     int
	Connected bool
}

// status lists the kernel's nbd devices, or only index when it is not negative.
func (g *genl) status(index int) ([]DeviceStatus, error) {
	req := g.request(nbdCmdStatus)
	if index >= 0 {
		req.AddData(nl.NewRtAttr(nbdAttrIndex, u32(uint32(index))))
	}
	msgs, err := req.Execute(unix.NETLINK_GENERIC, g.family)
	if err != nil {
		return nil, fmt.Errorf("nbd: NBD_CMD_STATUS: %w", err)
	}
	var out []DeviceStatus
	for _, m := range msgs {
		attrs, err := nl.ParseRouteAttr(m[nl.SizeofGenlmsg:])
		if err != nil {
			return nil, fmt.Errorf("nbd: NBD_CMD_STATUS reply: %w", err)
		}
		for _, list := range attrs {
			if list.Attr.Type&^unix.NLA_F_NESTED != nbdAttrDeviceList {
				continue
			}
			items, err := nl.ParseRouteAttr(list.Value)
			if err != nil {
				return nil, fmt.Errorf("nbd: NBD_CMD_STATUS device list: %w", err)
			}
			for _, item := range items {
				fields, err := nl.ParseRouteAttr(item.Value)
				if err != nil {
					return nil, fmt.Errorf("nbd: NBD_CMD_STATUS device: %w", err)
				}
				var d DeviceStatus
				for _, f := range fields {
					switch {
					case f.Attr.Type == nbdDeviceIndex && len(f.Value) == 4:
						d.Index = int(nl.NativeEndian().Uint32(f.Value))
					case f.Attr.Type == nbdDeviceConnected && len(f.Value) >= 1:
						d.Connected = f.Value[0] != 0
					}
				}
				out = append(out, d)
			}
		}
	}
	return out, nil
}

// Status reports whether /dev/nbd<index> is configured (has a live or dead-awaiting
// socket set), through NBD_CMD_STATUS.
func Status(index int) (DeviceStatus, error) {
	g, err := openGenl()
	if err != nil {
		return DeviceStatus{}, err
	}
	list, err := g.status(index)
	if err != nil {
		return DeviceStatus{}, err
	}
	for _, d := range list {
		if d.Index == index {
			return d, nil
		}
	}
	return DeviceStatus{Index: index}, nil
}

// linkDeadWatch receives NBD_CMD_LINK_DEAD from the nbd multicast group.
type linkDeadWatch struct {
	g *genl
	s *nl.NetlinkSocket
}

func (g *genl) watchLinkDead() (*linkDeadWatch, error) {
	s, err := nl.Subscribe(unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("nbd: netlink socket: %w", err)
	}
	// Group IDs of generic netlink families can exceed 32, which the bind-time bitmask
	// used by nl.Subscribe cannot express; join by socket option instead.
	if err := unix.SetsockoptInt(s.GetFd(), unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, int(g.mcGroup)); err != nil {
		s.Close()
		return nil, fmt.Errorf("nbd: join %s: %w", genlMcGroup, err)
	}
	return &linkDeadWatch{g: g, s: s}, nil
}

// next blocks until a LINK_DEAD arrives and returns its device index. After a receive
// buffer overflow (events were lost) it returns -1: the caller must assume any device.
func (w *linkDeadWatch) next() (int, error) {
	for {
		msgs, _, err := w.s.Receive()
		if errors.Is(err, unix.ENOBUFS) {
			return -1, nil
		}
		if err != nil {
			return 0, err
		}
		for _, m := range msgs {
			if m.Header.Type != w.g.family || len(m.Data) < nl.SizeofGenlmsg || m.Data[0] != nbdCmdLinkDead {
				continue
			}
			attrs, err := nl.ParseRouteAttr(m.Data[nl.SizeofGenlmsg:])
			if err != nil {
				continue
			}
			for _, a := range attrs {
				if a.Attr.Type == nbdAttrIndex && len(a.Value) == 4 {
					return int(nl.NativeEndian().Uint32(a.Value)), nil
				}
			}
		}
	}
}

func (w *linkDeadWatch) close() { w.s.Close() }
