package configfs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func target() Target {
	return Target{
		IQN: "iqn.2026-01.org.isboot.test:lio", Initiator: "iqn.2026-01.org.isboot.test:host",
		Device: "/dev/vda", Serial: "serial-1", LUN: 1,
		CHAPUser: "host", CHAPSecret: "host-secret-1", MutualUser: "lio", MutualSecret: "lio-secret-22",
		Params: map[string]string{"InitialR2T": "No"},
	}
}

// The plan is in an order configfs accepts, and prints without secrets.
func TestPlan(t *testing.T) {
	steps, err := Plan(target())
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, s := range steps {
		lines = append(lines, s.String())
	}
	all := strings.Join(lines, "\n")
	if strings.Contains(all, "host-secret-1") || strings.Contains(all, "lio-secret-22") {
		t.Errorf("a secret in the printed plan:\n%s", all)
	}
	index := func(sub string) int {
		for i, l := range lines {
			if strings.Contains(l, sub) {
				return i
			}
		}
		t.Fatalf("no step %q in:\n%s", sub, all)
		return -1
	}
	order := []string{"core/iblock_0/lun/control", "vpd_unit_serial", "core/iblock_0/lun/enable", "mkdir iscsi/iqn",
		"tpgt_1/lun/lun_1/backstore", "np/0.0.0.0:3260", "acls/iqn.2026-01.org.isboot.test:host/lun_1/lun",
		"auth/password_mutual", "param/InitialR2T", "tpgt_1/enable"}
	for i := 1; i < len(order); i++ {
		if index(order[i-1]) >= index(order[i]) {
			t.Errorf("step %q not before %q", order[i-1], order[i])
		}
	}
	if last := lines[len(lines)-1]; !strings.HasSuffix(last, "tpgt_1/enable") {
		t.Errorf("last step %q, want the TPG enabled", last)
	}
}

// Bad descriptions fail with one line naming the field.
func TestPlanRejects(t *testing.T) {
	for _, c := range []struct {
		edit func(*Target)
		want string
	}{
		{func(t *Target) { t.IQN = "lio" }, "target IQN"},
		{func(t *Target) { t.Initiator = "iqn.x/y" }, "initiator"},
		{func(t *Target) { t.Device = "vda" }, "device"},
		{func(t *Target) { t.Serial = "" }, "serial"},
		{func(t *Target) { t.LUN = 300 }, "LUN 300"},
		{func(t *Target) { t.CHAPSecret = "" }, "CHAP user and secret"},
		{func(t *Target) { t.MutualSecret = t.CHAPSecret }, "must differ"},
		{func(t *Target) { t.CHAPUser, t.CHAPSecret = "", "" }, "needs the initiator's CHAP"},
		{func(t *Target) { t.Params = map[string]string{"a/b": "1"} }, `param "a/b"`},
	} {
		tg := target()
		c.edit(&tg)
		_, err := Plan(tg)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("Plan: %v, want one line with %q", err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "host-secret-1") {
			t.Errorf("error shows a secret: %v", err)
		}
	}
}

// Apply makes the directories, files and links the plan names, and stops at the
// first failure with the step, secret hidden.
func TestApply(t *testing.T) {
	root := t.TempDir()
	steps := []Step{
		{Op: Mkdir, Path: "core"},
		{Op: Write, Path: "core/password", Value: "s3cret-value", Secret: true},
		{Op: Symlink, Path: "link", Value: "core"},
	}
	if err := Apply(root, steps, t.Logf); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "core/password")); err != nil || string(b) != "s3cret-value" {
		t.Errorf("core/password = %q, %v", b, err)
	}
	if dst, err := os.Readlink(filepath.Join(root, "link")); err != nil || dst != filepath.Join(root, "core") {
		t.Errorf("link -> %q, %v", dst, err)
	}
	err := Apply(root, []Step{{Op: Write, Path: "missing/password", Value: "s3cret-value", Secret: true}}, t.Logf)
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "missing/password") {
		t.Errorf("failed write: %v", err)
	}
}
