package vm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"
)

// console collects the serial console: every write goes to a file and to
// memory, and wakes whoever waits for a pattern.
type console struct {
	file *os.File

	mu      sync.Mutex
	buf     bytes.Buffer
	cursor  int           // WaitFor searches from here; a match moves it past the match
	changed chan struct{} // closed and replaced on every write and on exit
	exited  bool
	exitErr error
}

func newConsole(path string) (*console, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &console{file: f, changed: make(chan struct{})}, nil
}

// Write implements io.Writer for QEMU's stdout.
func (c *console) Write(p []byte) (int, error) {
	c.file.Write(p) // the file is a debugging aid; memory is what matters
	c.mu.Lock()
	c.buf.Write(p)
	c.wakeLocked()
	c.mu.Unlock()
	return len(p), nil
}

func (c *console) wakeLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// setExited records that QEMU is gone, so waiters stop waiting.
func (c *console) setExited(err error) {
	c.mu.Lock()
	c.exited, c.exitErr = true, err
	c.wakeLocked()
	c.mu.Unlock()
	c.file.Close()
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// tail returns the last n lines of the console.
func (c *console) tail(n int) string {
	lines := strings.Split(strings.TrimRight(c.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitFor blocks until re matches the console after the cursor, QEMU exits,
// ctx ends or timeout passes.
func (c *console) waitFor(ctx context.Context, timeout time.Duration, re *regexp.Regexp) ([]string, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		c.mu.Lock()
		rest := c.buf.Bytes()[c.cursor:]
		if loc := re.FindSubmatchIndex(rest); loc != nil {
			m := make([]string, len(loc)/2)
			for i := range m {
				if loc[2*i] >= 0 {
					m[i] = string(rest[loc[2*i]:loc[2*i+1]])
				}
			}
			c.cursor += loc[1]
			c.mu.Unlock()
			return m, nil
		}
		exited, exitErr, changed := c.exited, c.exitErr, c.changed
		c.mu.Unlock()
		if exited {
			return nil, fmt.Errorf("vm: waiting for %q: QEMU exited (%v)", re, exitErr)
		}
		select {
		case <-changed:
		case <-timer.C:
			return nil, fmt.Errorf("vm: waiting for %q: no match after %v", re, timeout)
		case <-ctx.Done():
			return nil, fmt.Errorf("vm: waiting for %q: %w", re, ctx.Err())
		}
	}
}
