package main

import (
	"os"

	"github.com/isboot/isboot/internal/initproc"
)

// As PID 1, isboot is /init in the initramfs: it boots and never returns.
func init() {
	roleHooks = append(roleHooks, func() bool {
		if os.Getpid() != 1 {
			return false
		}
		initproc.Run(Version)
		return true
	})
}
