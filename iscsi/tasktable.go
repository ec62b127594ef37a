package iscsi

import "sort"

// taskRef names one submission of a task slot; a stale ref (the slot has moved on)
// is recognised by its seq and ignored.
type taskRef struct {
	t   *task
	seq uint64
}

// register makes t active with a fresh ITT and submission order, and returns the
// current connection (it may be dead: sendDirect then declines).
func (s *Session) register(t *task) (*conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if s.failed != nil {
		return nil, s.failed
	}
	s.seq++
	s.ittGen++
	t.seq = s.seq
	t.itt = uint32(t.slot) | (s.ittGen&0x7fff)<<16
	t.gen = 0
	s.active[t.slot] = true
	s.wakeLocked()
	return s.conn, nil
}

func (s *Session) deactivate(t *task) {
	s.mu.Lock()
	s.active[t.slot] = false
	s.mu.Unlock()
	select { // drop a completion that raced with us
	case <-t.done:
	default:
	}
}

// claim hands a submitted task to connection gen, unless it is stale or already there.
func (s *Session) claim(ref taskRef, gen uint64) bool {
	t := ref.t
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.active[t.slot] || t.seq != ref.seq || t.gen == gen {
		return false
	}
	t.gen = gen
	t.reset()
	return true
}

func (s *Session) stillSent(t *task, seq, gen uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active[t.slot] && t.seq == seq && t.gen == gen
}

// activeInOrder claims every unfinished user command for connection gen, oldest first.
func (s *Session) activeInOrder(gen uint64) []*task {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ts []*task
	for i := range s.tasks {
		t := &s.tasks[i]
		if s.active[i] && !t.internal && t.gen != gen {
			t.gen = gen
			t.reset()
			ts = append(ts, t)
		}
	}
	sort.Slice(ts, func(a, b int) bool { return ts[a].seq < ts[b].seq })
	if len(ts) > 0 && gen > 1 {
		s.logf("iscsi: reissuing %d unfinished commands", len(ts))
	}
	return ts
}

// complete finishes t if connection c still owns it.
func (s *Session) complete(c *conn, t *task) {
	s.mu.Lock()
	if !s.active[t.slot] || t.gen != c.gen {
		s.mu.Unlock()
		return
	}
	s.active[t.slot] = false
	s.mu.Unlock()
	c.inflight.done(t)
	if !t.internal {
		s.progress.Store(true)
	}
	s.signal(t)
}

// signal tells t's submitter that it finished: the waiting caller, or for a command
// started with execAsync, its completion function.
func (s *Session) signal(t *task) {
	if t.onDone != nil {
		s.asyncDone(t)
		return
	}
	t.done <- struct{}{}
}
