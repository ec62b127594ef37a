package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/isboot/isboot/internal/blockdev"
	"github.com/isboot/isboot/internal/nbd"
	"github.com/isboot/isboot/internal/status"
	"github.com/isboot/isboot/iscsi"
)

func init() {
	register("serve", "expose an iSCSI LUN over NBD (socket) or as /dev/nbdN", runServe)
}

// serveConfig is everything `isboot serve` needs.
type serveConfig struct {
	// iSCSI source: an iBFT file, or the flags (portals, target, LUN). The flags'
	// CHAP secrets are read from files, never from argv.
	ibftFile string
	iscsi    iscsi.Config
	// multipath (--paths multipath) uses every portal at once, one session each
	// (iscsi.Multipath); paths are those sessions, filled once the source is known.
	multipath bool
	paths     []iscsi.Config
	// NBD side: exactly one of listen and attach.
	listen      string // "unix:PATH" or "tcp:HOST:PORT"
	attach      string // "any" or "/dev/nbdN"
	connections int
	readAheadKB int
	kernel      nbd.KernelConfig
	// Testing aids: serve a file (--image) or memory instead of an iSCSI LUN.
	file     string
	memSize  int64
	readOnly bool
	// status is the status file to publish ("": none); statusGiven says --status
	// named it, so it is written even when another live server owns it.
	status      string
	statusGiven bool
	ibftKeys    []status.KV // hw.ibft.* for the status file, with --ibft
}

func runServe(args []string) int {
	cfg, c, code := parseServeFlags(args, os.Stdout, os.Stderr)
	if code >= 0 {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logger := log.New(os.Stderr, "isboot serve: ", 0)
	if err := serve(ctx, cfg, logger.Printf); err != nil {
		return c.fail(err)
	}
	return 0
}

const serveSynopsis = `(--ibft FILE | --portal HOST:PORT[,HOST:PORT] --target IQN --lun N | --image FILE | --mem SIZE)
    [--initiator IQN] [--chap-user U --chap-secret-file F] [--rev-chap-user U --rev-chap-secret-file F]
    [--paths failover|multipath] [--header-digest none|crc32c] [--data-digest none|crc32c] [--read-only]
    (--listen unix:PATH | --listen tcp:HOST:PORT | --attach [/dev/nbdN]) [--connections N]
    [--read-ahead KiB] [--timeout D] [--dead-conn-timeout D] [--destroy-on-disconnect] [--disconnect-on-close]
    [--status PATH]`

// parseServeFlags returns the config and the command line's cli (for errors), or an
// exit code >= 0 when there is nothing to run.
func parseServeFlags(args []string, stdout, stderr io.Writer) (*serveConfig, *cli, int) {
	c := newCLI("serve", serveSynopsis, stdout, stderr)
	fl := c.FlagSet
	cfg := &serveConfig{}
	var portals, chapFile, revFile, lun, mem, headerDigest, dataDigest, pathMode string
	var timeout, deadTimeout time.Duration
	fl.StringVar(&cfg.ibftFile, "ibft", "", "take portal, target, LUN, initiator and CHAP from this iBFT file")
	fl.StringVar(&portals, "portal", "", "iSCSI portal(s) HOST:PORT[,HOST:PORT]")
	fl.StringVar(&pathMode, "paths", "failover", "with several portals (or iBFT targets): failover (one session, the next portal when one fails) or multipath (a session on each, used at once)")
	fl.StringVar(&cfg.iscsi.TargetName, "target", "", "target IQN")
	fl.StringVar(&lun, "lun", "", "LUN number (0-16383), or its 8-byte SAM form in 16 hex digits (0105000000000000: bus 1, LUN 5)")
	fl.StringVar(&cfg.iscsi.InitiatorName, "initiator", "", "initiator IQN (default: the iBFT's with --ibft, else a generated one)")
	fl.StringVar(&cfg.iscsi.CHAPUser, "chap-user", "", "CHAP user name")
	fl.StringVar(&chapFile, "chap-secret-file", "", "file holding the CHAP secret")
	fl.StringVar(&cfg.iscsi.RevCHAPUser, "rev-chap-user", "", "mutual (reverse) CHAP user name")
	fl.StringVar(&revFile, "rev-chap-secret-file", "", "file holding the mutual CHAP secret")
	fl.StringVar(&headerDigest, "header-digest", "", "none or crc32c, required: a target that refuses it ends serve (default: the target chooses)")
	fl.StringVar(&dataDigest, "data-digest", "", "none or crc32c, required: a target that refuses it ends serve (default: the target chooses)")
	fl.StringVar(&cfg.listen, "listen", "", "serve NBD on unix:PATH or tcp:HOST:PORT (tcp: NO AUTHENTICATION: whoever reaches the port reads and writes the LUN)")
	fl.StringVar(&cfg.attach, "attach", "", "attach to the kernel: /dev/nbdN, or no value for the first free device")
	fl.IntVar(&cfg.connections, "connections", 1, "sockets to the kernel (--attach)")
	fl.IntVar(&cfg.readAheadKB, "read-ahead", blockdev.DefaultReadAheadMax>>10, "largest read fetched ahead of a sequential reader, in KiB (0: none)")
	fl.DurationVar(&timeout, "timeout", 0, "kernel per-request timeout (--attach; 0: none)")
	fl.DurationVar(&deadTimeout, "dead-conn-timeout", 10*time.Minute, "how long the kernel waits for a new server once all sockets died (--attach)")
	fl.BoolVar(&cfg.kernel.DestroyOnDisconnect, "destroy-on-disconnect", false, "delete the device when disconnected (never for a root device)")
	fl.BoolVar(&cfg.kernel.DisconnectOnClose, "disconnect-on-close", false, "disconnect when the last opener closes the device (never for a root device)")
	fl.StringVar(&cfg.file, "image", "", "testing aid: serve this disk image file (or block device) instead of an iSCSI LUN")
	fl.StringVar(&mem, "mem", "", "testing aid: serve a zero-filled in-memory disk of this size (e.g. 64M)")
	fl.BoolVar(&cfg.readOnly, "read-only", false, "export read-only")
	fl.StringVar(&cfg.status, "status", status.DefaultPath, `publish the status file here (read it with isboot status --file PATH; "" for none)`)
	if code := c.parse(optionalAttachValue(args)); code >= 0 {
		return nil, c, code
	}
	fl.Visit(func(f *flag.Flag) { cfg.statusGiven = cfg.statusGiven || f.Name == "status" })
	usage := func(format string, a ...any) (*serveConfig, *cli, int) {
		return nil, c, c.usageError(format, a...)
	}
	if portals != "" {
		cfg.iscsi.Portals = strings.Split(portals, ",")
	}
	if lun != "" {
		a, err := iscsi.ParseLUNAddr(lun)
		if err != nil {
			return usage("--lun: %v", err)
		}
		cfg.iscsi.LUNAddr = a
		cfg.iscsi.LUN, _ = a.Number()
	}
	if mem != "" {
		n, err := parseSize(mem)
		if err != nil {
			return usage("--mem %q: %v", mem, err)
		}
		cfg.memSize = n
	}
	sources := 0
	src := &cfg.iscsi
	for _, set := range []bool{cfg.ibftFile != "", src.TargetName != "" || len(src.Portals) > 0, cfg.file != "", cfg.memSize > 0} {
		if set {
			sources++
		}
	}
	switch {
	case sources != 1:
		return usage("give exactly one of --ibft, --portal/--target/--lun (or --image, --mem for tests)")
	case src.TargetName != "" && len(src.Portals) == 0, len(src.Portals) > 0 && src.TargetName == "":
		return usage("--portal and --target go together")
	case (cfg.listen == "") == (cfg.attach == ""):
		return usage("give exactly one of --listen and --attach")
	case cfg.connections < 1 || cfg.connections > 16:
		return usage("--connections %d: want 1..16", cfg.connections)
	case cfg.readAheadKB < 0 || cfg.readAheadKB > 64<<10:
		return usage("--read-ahead %d: want 0..65536 KiB", cfg.readAheadKB)
	case (src.CHAPUser == "") != (chapFile == ""):
		return usage("--chap-user and --chap-secret-file go together")
	case (src.RevCHAPUser == "") != (revFile == ""):
		return usage("--rev-chap-user and --rev-chap-secret-file go together")
	case src.RevCHAPUser != "" && src.CHAPUser == "":
		return usage("mutual CHAP needs --chap-user as well")
	case pathMode != "failover" && pathMode != "multipath":
		return usage("--paths %q: want failover or multipath", pathMode)
	case pathMode == "multipath" && cfg.ibftFile == "" && len(src.Portals) < 2:
		return usage("--paths multipath needs two or more --portal (or --ibft)")
	}
	cfg.multipath = pathMode == "multipath"

	for _, d := range []struct {
		flag, value string
		dst         *iscsi.Digest
	}{{"--header-digest", headerDigest, &src.HeaderDigest}, {"--data-digest", dataDigest, &src.DataDigest}} {
		if d.value == "" {
			continue
		}
		// One value only: a digest given is required (a list would let the target choose).
		v, err := iscsi.ParseDigest(d.value)
		if err != nil || !v.Required() {
			return usage("%s %q: want none or crc32c", d.flag, d.value)
		}
		*d.dst = v
	}
	var err error
	if src.CHAPSecret, err = readSecret(chapFile); err != nil {
		return usage("%v", err)
	}
	if src.RevCHAPSecret, err = readSecret(revFile); err != nil {
		return usage("%v", err)
	}
	if cfg.multipath && cfg.ibftFile == "" {
		cfg.paths = portalPaths(*src)
	}
	cfg.kernel.Index = -1
	if cfg.attach != "" && cfg.attach != "any" {
		idx, ok := strings.CutPrefix(cfg.attach, "/dev/nbd")
		n, err := strconv.Atoi(idx)
		if !ok || err != nil || n < 0 {
			return usage("--attach %q: want /dev/nbdN", cfg.attach)
		}
		cfg.kernel.Index = n
	}
	cfg.kernel.Timeout, cfg.kernel.DeadConnTimeout = timeout, deadTimeout
	return cfg, c, -1
}

// portalPaths makes one path of each portal, with the same target, LUN and CHAP.
func portalPaths(c iscsi.Config) []iscsi.Config {
	paths := make([]iscsi.Config, len(c.Portals))
	for i, p := range c.Portals {
		paths[i] = c
		paths[i].Portals = []string{p}
	}
	return paths
}

// optionalAttachValue lets --attach stand alone ("first free device"): the flag package
// has no optional values, so a bare --attach becomes --attach=any.
func optionalAttachValue(args []string) []string {
	out := make([]string, 0, len(args))
	for i, a := range args {
		if (a == "--attach" || a == "-attach") && (i+1 == len(args) || strings.HasPrefix(args[i+1], "-")) {
			a = "--attach=any"
		}
		out = append(out, a)
	}
	return out
}

func readSecret(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("secret file: %w", err)
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", fmt.Errorf("secret file %s is empty", path)
	}
	return s, nil
}

// parseSize reads 512, 64K, 64M, 1G (binary units).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult = 1 << 10
	case strings.HasSuffix(s, "M"):
		mult = 1 << 20
	case strings.HasSuffix(s, "G"):
		mult = 1 << 30
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<50)/mult {
		return 0, errors.New("want a positive size like 64M")
	}
	return n * mult, nil
}
