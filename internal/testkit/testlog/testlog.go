// Package testlog collects the log lines that a test's goroutines write, for the test
// to read and wait on while they run.
package testlog

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

// Lines is a log safe for concurrent use; the zero value is empty and ready.
type Lines struct {
	mu sync.Mutex
	b  strings.Builder
}

// Printf adds one line; it has the shape of the Logf options of the code under test.
func (l *Lines) Printf(format string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(&l.b, format+"\n", a...)
}

// Write adds p as it is, so Lines can be a logger's output.
func (l *Lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns every line so far.
func (l *Lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// WaitFor polls until the log holds s or d has passed, and reports which.
func (l *Lines) WaitFor(s string, d time.Duration) bool {
	for deadline := time.Now().Add(d); !strings.Contains(l.String(), s); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}
