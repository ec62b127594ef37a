// Package configfs turns one iSCSI target description into the configfs writes that
// set up LIO, the Linux kernel's target (target_core_mod, iscsi_target_mod): an iblock
// backstore on a block device, the target IQN with one TPG, a LUN, a network portal,
// and an ACL for one initiator with CHAP or mutual CHAP. It is the tests' own
// targetcli: a plan of small steps (mkdir, write, symlink) that prints, then runs
// against a configfs root.
package configfs

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Root is where configfs keeps the target subsystem.
const Root = "/sys/kernel/config/target"

// Target is one LUN exported to one initiator. It travels to the target VM as JSON.
type Target struct {
	IQN       string // the target's name
	Initiator string // the only initiator the ACL admits
	Device    string // block device behind the LUN, e.g. /dev/vda
	Serial    string // VPD 0x80 unit serial; fixed, so a restarted target is the same disk
	LUN       int    // the number the initiator sees
	Port      int    // portal on 0.0.0.0; default 3260

	CHAPUser, CHAPSecret     string // the initiator's account; empty: no authentication
	MutualUser, MutualSecret string // what the target answers with (mutual CHAP)

	// Params are TPG login parameters to change from LIO's defaults (tpgt_1/param/),
	// e.g. {"MaxRecvDataSegmentLength": "262144"}.
	Params map[string]string
}

// Op is what a step does to configfs.
type Op int

const (
	Mkdir   Op = iota // create an object
	Write             // set an attribute
	Symlink           // link an object into another (LUN to backstore, mapped LUN to LUN)
)

// Step is one configfs change.
type Step struct {
	Op     Op
	Path   string // relative to the configfs target root
	Value  string // what Write writes, the link target (relative to the root) for Symlink
	Secret bool   // Value is a CHAP secret: never printed
}

func (s Step) String() string {
	v := s.Value
	if s.Secret {
		v = "***"
	}
	switch s.Op {
	case Mkdir:
		return "mkdir " + s.Path
	case Symlink:
		return "ln -s " + v + " " + s.Path
	}
	return fmt.Sprintf("echo %q > %s", v, s.Path)
}

// Plan checks t and returns the steps that set it up, in an order configfs accepts:
// the backstore enabled before the LUN links to it, the ACL's mapped LUN after the
// TPG's LUN, the TPG enabled last.
func Plan(t Target) ([]Step, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	port := t.Port
	if port == 0 {
		port = 3260
	}
	const store = "core/iblock_0/lun"
	tpg := "iscsi/" + t.IQN + "/tpgt_1"
	lun := fmt.Sprintf("%s/lun/lun_%d", tpg, t.LUN)
	acl := tpg + "/acls/" + t.Initiator
	auth := "0"
	if t.CHAPUser != "" {
		auth = "1"
	}
	steps := []Step{
		{Op: Mkdir, Path: "core/iblock_0"},
		{Op: Mkdir, Path: store},
		{Op: Write, Path: store + "/control", Value: "udev_path=" + t.Device},
		// The serial must be set before enable; it also feeds the VPD 0x83 NAA id.
		{Op: Write, Path: store + "/wwn/vpd_unit_serial", Value: t.Serial},
		{Op: Write, Path: store + "/enable", Value: "1"},
		// The fabric's directory appears only when made (it would load the module).
		{Op: Mkdir, Path: "iscsi"},
		{Op: Mkdir, Path: "iscsi/" + t.IQN},
		{Op: Mkdir, Path: tpg},
		{Op: Mkdir, Path: lun},
		{Op: Symlink, Path: lun + "/backstore", Value: store},
		{Op: Mkdir, Path: fmt.Sprintf("%s/np/0.0.0.0:%d", tpg, port)},
		{Op: Write, Path: tpg + "/attrib/generate_node_acls", Value: "0"},
		{Op: Write, Path: tpg + "/attrib/authentication", Value: auth},
		{Op: Mkdir, Path: acl},
		{Op: Mkdir, Path: fmt.Sprintf("%s/lun_%d", acl, t.LUN)},
		{Op: Symlink, Path: fmt.Sprintf("%s/lun_%d/lun", acl, t.LUN), Value: lun},
	}
	if t.CHAPUser != "" {
		steps = append(steps,
			Step{Op: Write, Path: acl + "/auth/userid", Value: t.CHAPUser},
			Step{Op: Write, Path: acl + "/auth/password", Value: t.CHAPSecret, Secret: true})
	}
	if t.MutualUser != "" {
		steps = append(steps,
			Step{Op: Write, Path: acl + "/auth/userid_mutual", Value: t.MutualUser},
			Step{Op: Write, Path: acl + "/auth/password_mutual", Value: t.MutualSecret, Secret: true})
	}
	for _, k := range slices.Sorted(maps.Keys(t.Params)) {
		steps = append(steps, Step{Op: Write, Path: tpg + "/param/" + k, Value: t.Params[k]})
	}
	return append(steps, Step{Op: Write, Path: tpg + "/enable", Value: "1"}), nil
}

func (t Target) check() error {
	switch {
	case !strings.HasPrefix(t.IQN, "iqn.") || strings.ContainsAny(t.IQN, "/ "):
		return fmt.Errorf("configfs: target IQN %q: want iqn.… without / or spaces", t.IQN)
	case !strings.HasPrefix(t.Initiator, "iqn.") || strings.ContainsAny(t.Initiator, "/ "):
		return fmt.Errorf("configfs: initiator %q: want iqn.… without / or spaces", t.Initiator)
	case !strings.HasPrefix(t.Device, "/dev/"):
		return fmt.Errorf("configfs: device %q: want a /dev path", t.Device)
	case t.Serial == "" || strings.ContainsAny(t.Serial, " \n"):
		return fmt.Errorf("configfs: serial %q: want one word", t.Serial)
	case t.LUN < 0 || t.LUN > 255:
		return fmt.Errorf("configfs: LUN %d: want 0-255", t.LUN)
	case t.Port < 0 || t.Port > 65535:
		return fmt.Errorf("configfs: port %d: want 1-65535", t.Port)
	case (t.CHAPUser == "") != (t.CHAPSecret == ""):
		return errors.New("configfs: CHAP user and secret: give both or neither")
	case (t.MutualUser == "") != (t.MutualSecret == ""):
		return errors.New("configfs: mutual CHAP user and secret: give both or neither")
	case t.MutualUser != "" && t.CHAPUser == "":
		return errors.New("configfs: mutual CHAP needs the initiator's CHAP account too")
	case t.MutualSecret != "" && t.MutualSecret == t.CHAPSecret:
		// LIO refuses a mutual login whose two secrets are equal (a reflection guard).
		return errors.New("configfs: mutual CHAP secret: must differ from the CHAP secret")
	}
	for k, v := range t.Params {
		if k == "" || strings.ContainsAny(k, "/. ") || v == "" {
			return fmt.Errorf("configfs: param %q=%q: want Key=Value", k, v)
		}
	}
	return nil
}

// Apply runs the steps under root (Root in the target VM). logf sees each step,
// secrets hidden. It stops at the first failure, naming the step.
func Apply(root string, steps []Step, logf func(string, ...any)) error {
	for _, s := range steps {
		logf("lio: %s", s)
		p := filepath.Join(root, s.Path)
		var err error
		switch s.Op {
		case Mkdir:
			err = os.Mkdir(p, 0o755)
		case Write:
			// No newline: LIO keeps the auth strings byte for byte, "\n" and all.
			err = os.WriteFile(p, []byte(s.Value), 0o644)
		case Symlink:
			err = os.Symlink(filepath.Join(root, s.Value), p)
		}
		if err != nil { // s prints without its secret; err names only the path
			return fmt.Errorf("configfs: %s: %w", s, err)
		}
	}
	return nil
}
