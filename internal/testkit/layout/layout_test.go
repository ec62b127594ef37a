// Package layout checks the rules the tree's layout promises (README "Layout"): the
// product never links the test harness, and the public stages stay importable.
package layout

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/isboot/isboot/"

// goList runs `go list` from the module root with the given arguments.
func goList(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = "../../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	return strings.Fields(string(out))
}

func TestProductLinksNoHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list over the module (a few seconds)")
	}
	ours := 0
	for _, line := range goList(t, "-deps", "-f", "{{.ImportPath}}|{{join .Imports \",\"}}", "./cmd/isboot") {
		pkg, imports, _ := strings.Cut(line, "|")
		if strings.HasPrefix(pkg, module) {
			ours++
		}
		if strings.Contains(pkg, "gotgt") {
			t.Errorf("isboot links %s", pkg)
		}
		if !strings.HasPrefix(pkg, module) {
			continue
		}
		if strings.Contains(pkg, "/internal/testkit") {
			t.Errorf("isboot links the test harness package %s", pkg)
		}
		for _, imp := range strings.Split(imports, ",") {
			if imp == "testing" {
				t.Errorf("%s, linked into isboot, imports testing", pkg)
			}
		}
	}
	if ours < 8 { // ibft, netcfg, iscsi, bootplan, blockdev, nbd, initproc, daemon, ...
		t.Errorf("go list showed only %d of this module's packages in isboot", ours)
	}
}

func TestPublicStagesImportNoInternal(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list over the module (a few seconds)")
	}
	for _, line := range goList(t, "-f", "{{.ImportPath}}|{{join .Imports \",\"}}", "./...") {
		pkg, imports, _ := strings.Cut(line, "|")
		rel := strings.TrimPrefix(pkg, module)
		if strings.HasPrefix(rel, "internal/") || strings.HasPrefix(rel, "cmd/") {
			continue
		}
		for _, imp := range strings.Split(imports, ",") {
			if strings.HasPrefix(imp, module+"internal/") {
				t.Errorf("public package %s imports %s", pkg, imp)
			}
		}
	}
}
