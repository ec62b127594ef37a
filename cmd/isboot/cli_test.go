package main

import (
	"bytes"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// runCmd runs subcommand name in-process with its output captured.
func runCmd(t *testing.T, name string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	switch name {
	case "ibft":
		code = ibftMain(args, &o, &e)
	case "netcfg":
		code = netcfgMain(args, &o, &e)
	case "status":
		code = statusMain(args, &o, &e)
	case "stop":
		code = stopMain(args, &o, &e)
	case "initramfs":
		code = initramfsMain(args, &o, &e)
	case "serve":
		var c *cli
		var cfg *serveConfig
		if cfg, c, code = parseServeFlags(args, &o, &e); code < 0 {
			code = 0
			if err := serve(t.Context(), cfg, func(string, ...any) {}); err != nil {
				code = c.fail(err)
			}
		}
	default: // commands that only print (version): through os.Stdout
		out, c := runSelf(t, append([]string{name}, args...)...)
		return out, out, c
	}
	return o.String(), e.String(), code
}

var helpFlag = regexp.MustCompile(`(?m)^  --([a-z0-9-]+)`)

// Every subcommand has the same command-line manners: --help exits 0 with a usage
// line that names every flag, a usage error exits 2 with "isboot <sub>: <message>"
// and the usage line, a runtime error exits 1 with one "isboot <sub>: ..." line; and a
// flag name means one thing whichever subcommand takes it.
func TestEverySubcommandCLI(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	// A runtime error for each subcommand that can have one (version cannot).
	runtimeError := map[string][]string{
		"ibft":      {"--file", missing},
		"initramfs": {}, // the test's root is no initramfs
		"netcfg":    {"--file", missing, "--dry-run"},
		"serve":     {"--image", missing, "--listen", "unix:" + filepath.Join(dir, "sock"), "--status", ""},
		"status":    {"--file", missing},
		"stop":      {"--file", missing},
		"version":   nil,
	}
	var names []string
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	usageOf := map[string]map[string]string{} // flag name → subcommand → its help text
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			rt, ok := runtimeError[name]
			if !ok {
				t.Fatalf("subcommand %s is not in this test's table", name)
			}
			usage := "usage: isboot " + name

			out, errOut, code := runCmd(t, name, "--help")
			if code != 0 || !strings.HasPrefix(out, usage) {
				t.Fatalf("--help: exit %d, stdout:\n%s\nstderr:\n%s", code, out, errOut)
			}
			synopsis, flags, _ := strings.Cut(out, "\n\n")
			for _, m := range helpFlag.FindAllStringSubmatch(flags, -1) {
				f := m[1]
				if !regexp.MustCompile(`--` + regexp.QuoteMeta(f) + `\b`).MatchString(synopsis) {
					t.Errorf("the usage line lacks --%s:\n%s", f, synopsis)
				}
				if usageOf[f] == nil {
					usageOf[f] = map[string]string{}
				}
				usageOf[f][name] = helpText(flags, f)
			}

			for _, bad := range []string{"--no-such-flag", "stray-argument"} {
				_, errOut, code := runCmd(t, name, bad)
				lines := strings.SplitN(errOut, "\n", 2)
				if code != 2 || !strings.HasPrefix(lines[0], "isboot "+name+": ") || !strings.Contains(lines[0], bad) ||
					len(lines) < 2 || !strings.HasPrefix(lines[1], usage) {
					t.Errorf("%s: exit %d, stderr:\n%s\nwant 2, \"isboot %s: ...%s...\" and the usage line", bad, code, errOut, name, bad)
				}
			}

			if rt != nil {
				_, errOut, code := runCmd(t, name, rt...)
				if code != 1 || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, "isboot "+name+": ") {
					t.Errorf("%q: exit %d, stderr %q; want 1 and one line \"isboot %s: ...\"", rt, code, errOut, name)
				}
			}
		})
	}

	// One meaning per flag name. The contract (DESIGN.md) keeps --file for the file a
	// command reads instead of the live system: an iBFT image (ibft, netcfg) or a
	// status file (status, stop); every other shared flag has one help text.
	for f, by := range usageOf {
		var texts []string
		for _, u := range by {
			if !slices.Contains(texts, u) {
				texts = append(texts, u)
			}
		}
		want := 1
		if f == "file" {
			want = 2
		}
		if len(texts) > want {
			t.Errorf("--%s means %d things: %q", f, len(texts), by)
		}
	}
	if by := usageOf["file"]; by["ibft"] != by["netcfg"] || by["status"] != by["stop"] || by["serve"] != "" {
		t.Errorf("--file: %q", by)
	}
}

// helpText is flag f's description in --help output.
func helpText(help, f string) string {
	_, rest, _ := strings.Cut(help, "  --"+f)
	_, rest, _ = strings.Cut(rest, "\n    \t")
	text, _, _ := strings.Cut(rest, "\n  --")
	text = regexp.MustCompile(` \(default .*\)\n?$`).ReplaceAllString(strings.TrimSuffix(text, "\n"), "")
	return text
}

// --json is there wherever the output is structured.
func TestJSONWhereStructured(t *testing.T) {
	bin := filepath.Join(ibftFixtures, "basic.bin")
	out, errOut, code := runCmd(t, "netcfg", "--file", bin, "--dry-run", "--json", "--cmdline", "")
	if code != 0 || !strings.HasPrefix(out, "{") || !strings.Contains(out, `"address": "10.0.2.15/24"`) ||
		!strings.Contains(out, `"dst": "default"`) || !strings.Contains(out, `"mac": "52:54:00:12:34:56"`) {
		t.Errorf("netcfg --dry-run --json: exit %d\n%s%s", code, out, errOut)
	}
	for _, c := range []string{"ibft", "status", "netcfg"} {
		if out, _, _ := runCmd(t, c, "--help"); !strings.Contains(out, "  --json\n") {
			t.Errorf("%s has no --json", c)
		}
	}
}
