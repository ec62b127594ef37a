package initproc

import "strings"

// initEnv is the environment the real init gets: what the kernel gave /init (HOME=/,
// TERM=linux, and the plain a=b words of the command line that it does not know and
// that have no dot in the name), as initramfs-tools' run-init and dracut pass it on,
// but never a secret. Withheld are netroot= (dracut's syntax carries the CHAP
// secrets) and any variable whose name mentions chap, secret or pass (password,
// passphrase); their names come back in withheld, for the log. HOME and TERM get the
// kernel's values when they are missing.
func initEnv(kernel []string) (env, withheld []string) {
	env = []string{}
	have := map[string]bool{}
	for _, kv := range kernel {
		name, _, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			continue
		}
		if secretName(name) {
			withheld = append(withheld, name)
			continue
		}
		have[name] = true
		env = append(env, kv)
	}
	for _, d := range []string{"HOME=/", "TERM=linux"} {
		if name, _, _ := strings.Cut(d, "="); !have[name] {
			env = append(env, d)
		}
	}
	return env, withheld
}

// secretName reports a variable that may hold a secret.
func secretName(name string) bool {
	n := strings.ToLower(name)
	if n == "netroot" {
		return true
	}
	for _, s := range []string{"chap", "secret", "pass"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}
