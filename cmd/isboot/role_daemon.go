package main

import (
	"os"

	"github.com/isboot/isboot/internal/daemon"
)

// Started as "@isboot" (by PID 1), isboot is the serving daemon.
func init() {
	roleHooks = append(roleHooks, func() bool {
		if len(os.Args) == 0 || os.Args[0] != daemon.Argv0 {
			return false
		}
		os.Exit(daemon.Main(daemon.DialISCSI, Version))
		return true
	})
}
