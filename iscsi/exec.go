package iscsi

import (
	"errors"
	"fmt"
	"time"
)

// exec runs one command to completion, retrying what SCSI says to retry.
// It is the I/O hot path: the slot, its buffers and channels are all reused.
func (s *Session) exec(op string, cd cdb, read bool, buf []byte) (int, error) {
	return s.execCounted(op, cd, read, buf, false)
}

// probe is exec for a query the target need not implement (a VPD page, READ
// CAPACITY(16), REPORT SUPPORTED OPERATION CODES). ILLEGAL REQUEST is then an
// answer: it reaches the caller but is not counted among the session's errors, which
// users read as I/O errors.
func (s *Session) probe(op string, cd cdb, buf []byte) (int, error) {
	return s.execCounted(op, cd, true, buf, true)
}

func (s *Session) execCounted(op string, cd cdb, read bool, buf []byte, probe bool) (int, error) {
	var slot int
	select {
	case slot = <-s.free:
	case <-s.closing:
		return 0, ErrClosed
	}
	t := &s.tasks[slot]
	n, err := s.execSlot(t, op, cd, read, buf)
	s.free <- slot
	counted := err
	var se *SCSIError
	if probe && errors.As(err, &se) && se.Key == senseIllegalRequest {
		counted = nil
	}
	s.account(read, n, len(buf), counted)
	return n, err
}

func (s *Session) account(read bool, n, size int, err error) {
	s.commands.Add(1)
	if err != nil {
		s.errs.Add(1)
	} else if read {
		s.readBytes.Add(uint64(n))
	} else {
		s.writeBytes.Add(uint64(size))
	}
}

func (s *Session) execSlot(t *task, op string, cd cdb, read bool, buf []byte) (int, error) {
	backoff := time.Millisecond
	for attempt := 0; ; attempt++ {
		t.prepare(cd, read, buf)
		c, err := s.register(t)
		if err != nil {
			return 0, err
		}
		if ref := (taskRef{t, t.seq}); c == nil || !c.sendDirect(ref, false) {
			select {
			case s.cmdCh <- ref:
			case <-s.failedCh: // failAll completes t
			}
		}
		<-t.done
		err = t.result(op)
		if err == nil {
			return t.transferred(), nil
		}
		s.noteError(err)
		retry, wait := retryable(err, attempt, &backoff)
		if !retry {
			return 0, err
		}
		time.Sleep(wait)
	}
}

// retryable says whether SCSI asks for a failed command again, and how long to wait
// first. backoff is the command's current back-off; each wait doubles it up to 1 s.
func retryable(err error, attempt int, backoff *time.Duration) (bool, time.Duration) {
	var se *SCSIError
	if !errors.As(err, &se) || attempt >= 200 {
		return false, 0
	}
	switch {
	case se.Status == statusCheckCondition && se.Key == senseUnitAttention:
		// Power on, reset, parameters changed: retry at once.
		return true, 0
	case se.Status == statusBusy || se.Status == statusTaskSetFull ||
		se.Status == statusCheckCondition && (se.Key == senseAbortedCommand ||
			se.Key == senseNotReady && se.ASC == 0x04 && se.ASCQ != 0x02):
		wait := *backoff
		*backoff = min(2*wait, time.Second)
		return true, wait
	}
	return false, 0
}

// transferred is how many bytes a successful command moved.
func (t *task) transferred() int {
	n := t.size
	if t.read && t.resid > 0 {
		n -= int(min(t.resid, int64(n)))
	}
	return n
}

// result turns the task's outcome into an error.
func (t *task) result(op string) error {
	if t.err != nil {
		return t.err
	}
	if t.response != 0 {
		return fmt.Errorf("iscsi: %s: target failure (response 0x%02x)", op, t.response)
	}
	if t.status == statusGood {
		return nil
	}
	e := &SCSIError{Op: op, Status: t.status}
	if t.status == statusCheckCondition {
		e.Key, e.ASC, e.ASCQ, _ = parseSense(t.sense[:t.senseLen])
	}
	return e
}
