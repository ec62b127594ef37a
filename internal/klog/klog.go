// Package klog logs the boot story to the kernel log (/dev/kmsg, so dmesg and the
// journal show it with the right priority) and to the console.
package klog

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
)

// Syslog priorities as /dev/kmsg takes them in "<N>" prefixes.
const (
	Err    = 3
	Warn   = 4
	Notice = 5
	Info   = 6
	Debug  = 7
)

// Logger writes each message once to the kernel log and, when the kernel would not
// already echo it there, to the console.
type Logger struct {
	mu      sync.Mutex
	prefix  string
	kmsg    io.Writer // nil: no kernel log
	console io.Writer // nil: no console
	// consoleLevel is the kernel's console_loglevel: messages below it reach the
	// console through the kernel, so writing them again would print them twice.
	consoleLevel int
	verbosity    int // isboot.debug: 0 shows Info and above, 1..3 add Debug levels
}

// New returns a logger; either writer may be nil.
func New(prefix string, kmsg, console io.Writer, consoleLevel, verbosity int) *Logger {
	return &Logger{prefix: prefix, kmsg: kmsg, console: console, consoleLevel: consoleLevel, verbosity: verbosity}
}

// Open opens /dev/kmsg and /dev/console and reads console_loglevel from
// /proc/sys/kernel/printk. It also lifts the kernel's rate limit on /dev/kmsg writes
// (10 lines per 5 s by default), which would drop most of a boot's messages.
func Open(prefix string, verbosity int) *Logger {
	_ = os.WriteFile("/proc/sys/kernel/printk_devkmsg", []byte("on\n"), 0)
	l := &Logger{prefix: prefix, consoleLevel: 7, verbosity: verbosity}
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		l.kmsg = f
	}
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		l.console = f
	} else {
		l.console = os.Stderr
	}
	if b, err := os.ReadFile("/proc/sys/kernel/printk"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				l.consoleLevel = n
			}
		}
	}
	return l
}

// SetVerbosity changes the isboot.debug level.
func (l *Logger) SetVerbosity(v int) {
	l.mu.Lock()
	l.verbosity = v
	l.mu.Unlock()
}

// Verbosity is the isboot.debug level.
func (l *Logger) Verbosity() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.verbosity
}

func (l *Logger) Errorf(format string, a ...any) { l.log(Err, format, a...) }
func (l *Logger) Warnf(format string, a ...any)  { l.log(Warn, format, a...) }
func (l *Logger) Infof(format string, a ...any)  { l.log(Info, format, a...) }

// Debugf logs when isboot.debug is at least level (1..3).
func (l *Logger) Debugf(level int, format string, a ...any) {
	if l.Verbosity() >= level {
		l.log(Debug, format, a...)
	}
}

// Printf is Infof, so a Logger can stand in for log.Printf-style callbacks.
func (l *Logger) Printf(format string, a ...any) { l.log(Info, format, a...) }

func (l *Logger) log(level int, format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(strings.TrimRight(msg, "\n"), "\n") {
		if l.kmsg != nil {
			// One write is one record in the kernel log.
			fmt.Fprintf(l.kmsg, "<%d>%s: %s\n", level, l.prefix, line)
		}
		if l.console != nil && (l.kmsg == nil || level >= l.consoleLevel) {
			fmt.Fprintf(l.console, "%s: %s\n", l.prefix, line)
		}
	}
}
