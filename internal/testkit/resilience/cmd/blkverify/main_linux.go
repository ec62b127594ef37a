// Command blkverify is the guest side of the resilience tests: a writer that
// acknowledges on stdout (the console) only what fsync made durable, and a
// verifier that later checks every acknowledged block, read with O_DIRECT so
// the page cache cannot hide a loss.
//
//	blkverify write  -file F [-slots N] [-block B] [-batch K] [-for D] [-until FILE]
//	blkverify verify -file F -run R -acked S
//
// The writer prints, on stdout:
//
//	blkverify: start run=R slots=N block=B
//	blkverify: acked=S                 every sequence number below S is durable (at most once a second)
//	blkverify: stall fsync=12.3s acked=S   an fsync that took longer than a second
//	blkverify: done run=R acked=S writes=W max_fsync=D stalls=K mib=M
//	blkverify: ERROR ...              an I/O error: what the guest's application saw
//
// and stops after -for, when the file -until appears, or on SIGTERM/SIGINT.
// The verifier prints "blkverify: verify ok ..." or "blkverify: ERROR verify FAILED ...".
package main

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/internal/testkit/resilience/blockfmt"
)

// out is where the acknowledgements go (the console); tests replace it.
var out io.Writer = os.Stdout

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: blkverify write|verify [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "write":
		err = runWrite(os.Args[2:])
	case "verify":
		err = runVerify(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q (write or verify)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(out, "blkverify: ERROR %v\n", err)
		os.Exit(1)
	}
}

type geometry struct {
	file  string
	slots uint64
	block int
}

func (g *geometry) flags(fs *flag.FlagSet) {
	fs.StringVar(&g.file, "file", "/var/lib/isboot-test/blkverify.dat", "data file")
	fs.Uint64Var(&g.slots, "slots", 8192, "blocks in the file")
	fs.IntVar(&g.block, "block", 4096, "block size (a multiple of 4096 for O_DIRECT)")
}

func runWrite(args []string) error {
	fs := flag.NewFlagSet("write", flag.ContinueOnError)
	var g geometry
	g.flags(fs)
	batch := fs.Int("batch", 16, "blocks per fsync")
	dur := fs.Duration("for", 0, "stop after this long (0: until signalled)")
	until := fs.String("until", "", "stop once this file exists")
	if err := fs.Parse(args); err != nil {
		return err
	}
	f, err := os.OpenFile(g.file, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	var rb [8]byte
	rand.Read(rb[:])
	run := binary.LittleEndian.Uint64(rb[:]) | 1 // never 0, which a zeroed block would match
	fmt.Fprintf(out, "blkverify: start run=%#x slots=%d block=%d file=%s\n", run, g.slots, g.block, g.file)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	var deadline <-chan time.Time
	if *dur > 0 {
		deadline = time.After(*dur)
	}

	buf := make([]byte, g.block**batch) // reused for every batch
	var (
		seq, acked, writes, stalls uint64
		maxSync                    time.Duration
		lastPrint                  time.Time
	)
	done := func() {
		fmt.Fprintf(out, "blkverify: done run=%#x acked=%d writes=%d max_fsync=%.1fs stalls=%d mib=%d\n",
			run, acked, writes, maxSync.Seconds(), stalls, writes*uint64(g.block)>>20)
	}
	for {
		select {
		case <-stop:
			done()
			return nil
		case <-deadline:
			done()
			return nil
		default:
		}
		if *until != "" && seq%uint64(*batch*64) == 0 {
			if _, err := os.Stat(*until); err == nil {
				done()
				return nil
			}
		}
		// One batch of consecutive sequence numbers; a batch never wraps the
		// file, so it is one pwrite.
		n := uint64(*batch)
		if room := g.slots - seq%g.slots; n > room {
			n = room
		}
		for i := uint64(0); i < n; i++ {
			blockfmt.Fill(buf[int(i)*g.block:int(i+1)*g.block], run, seq+i, g.slots)
		}
		if _, err := f.WriteAt(buf[:int(n)*g.block], int64(seq%g.slots)*int64(g.block)); err != nil {
			done()
			return fmt.Errorf("write at seq %d: %w", seq, err)
		}
		t0 := time.Now()
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			done()
			return fmt.Errorf("fdatasync after seq %d: %w", seq+n-1, err)
		}
		took := time.Since(t0)
		seq += n
		writes += n
		acked = seq
		if took > maxSync {
			maxSync = took
		}
		if took > time.Second {
			stalls++
			fmt.Fprintf(out, "blkverify: stall fsync=%.1fs acked=%d\n", took.Seconds(), acked)
			lastPrint = time.Now()
		} else if time.Since(lastPrint) >= time.Second {
			fmt.Fprintf(out, "blkverify: acked=%d\n", acked)
			lastPrint = time.Now()
		}
	}
}

func runVerify(args []string) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	var g geometry
	g.flags(fs)
	run := fs.Uint64("run", 0, "run id the writer printed")
	acked := fs.Uint64("acked", 0, "the last acked= the writer printed")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *run == 0 {
		return errors.New("verify: -run is required")
	}
	f, err := os.OpenFile(g.file, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// O_DIRECT wants an aligned buffer: an anonymous mapping is page aligned.
	const chunk = 256
	buf, err := unix.Mmap(-1, 0, chunk*g.block, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	var bad, newer uint64
	var first string
	for base := uint64(0); base < g.slots; base += chunk {
		n := min(uint64(chunk), g.slots-base)
		got, err := f.ReadAt(buf[:int(n)*g.block], int64(base)*int64(g.block))
		if errors.Is(err, io.EOF) {
			// A writer that never wrapped leaves a short file: the slots past
			// its end hold nothing, which is fine unless a write was acknowledged there.
			clear(buf[got:])
		} else if err != nil {
			return fmt.Errorf("verify: read slot %d: %w", base, err)
		}
		for i := uint64(0); i < n; i++ {
			slot := base + i
			b := buf[int(i)*g.block : int(i+1)*g.block]
			if err := blockfmt.Check(b, *run, slot, g.slots, *acked); err != nil {
				// A slot no acknowledged write reached may still hold anything.
				if _, ok := blockfmt.MinSeq(slot, g.slots, *acked); !ok {
					continue
				}
				bad++
				if first == "" {
					first = fmt.Sprintf("slot %d: %v", slot, err)
				}
				continue
			}
			if h, _ := blockfmt.Parse(b); h.Seq >= *acked {
				newer++
			}
		}
	}
	checked := min(*acked, g.slots)
	if bad > 0 {
		return fmt.Errorf("verify FAILED bad=%d checked=%d acked=%d first: %s", bad, checked, *acked, first)
	}
	fmt.Fprintf(out, "blkverify: verify ok checked=%d acked=%d newer=%d run=%#x\n", checked, *acked, newer, *run)
	return nil
}
