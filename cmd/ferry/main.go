// Command ferry carries virtual-machine disk images into KubeVirt: it
// fetches, converts to RAW, verifies and uploads them. This package only
// turns flags into library calls, renders progress and sets exit codes.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/hikube/ferry/converter"
	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/importer"
)

// Exit codes.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitBadImage    = 3 // corrupt, unsupported or unsafe image
	exitChecksum    = 4 // the source does not match its published checksum
	exitInterrupted = 130
)

var version = "dev"

func main() {
	oneMoreProc()
	os.Exit(run(os.Args[1:]))
}

// oneMoreProc runs one more P than the runtime's default (CPUs, or the
// cgroup's limit), unless GOMAXPROCS is set. File and device targets are
// written by several O_DIRECT writers whose pwrite blocks about a
// millisecond while holding its P, and sysmon, polling slowly when it has
// little to retake, rarely hands such a P over. In a runtime trace of a
// 3 GB qcow2 converted over HTTP on 2 CPUs, the source hasher (the one
// serial stage) waited runnable 1.15 s of a 4 s run, 0.62 s of it with no
// goroutine running and both Ps held in syscalls; with one more P it
// waited 0.12 s and the run took about 9 % less time (bench corpus,
// medians of 6; other formats within ±3 %).
func oneMoreProc() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1)
	}
}

// pollableStdin makes a piped stdin non-blocking and pollable, so that
// closing it on Ctrl-C unblocks a pending read (a blocking pipe read
// would ignore the cancellation until the writer sends more). Terminals
// are left alone: a non-blocking TTY would outlive us in the shell.
func pollableStdin() {
	st, err := os.Stdin.Stat()
	if err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		return
	}
	if syscall.SetNonblock(syscall.Stdin, true) == nil {
		// Keep the old *os.File reachable: its finalizer would close fd 0.
		blockingStdin = os.Stdin
		os.Stdin = os.NewFile(uintptr(syscall.Stdin), "/dev/stdin")
	}
}

var blockingStdin *os.File

func run(args []string) int {
	pollableStdin()
	// FERRY_CPUPROFILE=FILE: a CPU profile of the whole run, for `make
	// bench` investigations (go tool pprof bin/ferry FILE).
	if p := os.Getenv("FERRY_CPUPROFILE"); p != "" {
		if f, err := os.Create(p); err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// First Ctrl-C (or SIGTERM, as Kubernetes sends): cancel, let the
	// pipeline remove partial output, exit 130. A second: exit at once.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		if _, ok := <-sigs; !ok {
			return
		}
		cancel()
		// A read of stdin does not watch the context: closing it ends
		// the read so the cancellation is seen.
		os.Stdin.Close()
		if _, ok := <-sigs; ok {
			fmt.Fprintln(os.Stderr, "ferry: interrupted twice; exiting now")
			os.Exit(exitInterrupted)
		}
	}()
	root := newRoot()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ue usageError
	var ce *importer.ChecksumError
	switch {
	case errors.As(err, &ce):
		fmt.Fprintf(os.Stderr, "ferry: %v\n", err)
		return exitChecksum
	case errors.As(err, &ue), errors.Is(err, converter.ErrNeedsRandomAccess), errors.Is(err, importer.ErrNeedScratch):
		fmt.Fprintf(os.Stderr, "ferry: %v\n", err)
		return exitUsage
	case ctx.Err() != nil:
		fmt.Fprintln(os.Stderr, "ferry: interrupted; partial output removed")
		return exitInterrupted
	case errors.Is(err, format.ErrCorrupt), errors.Is(err, format.ErrUnsupported),
		errors.Is(err, format.ErrUnsafeReference), errors.Is(err, format.ErrReferenceLoop),
		errors.Is(err, format.ErrWrongType):
		fmt.Fprintf(os.Stderr, "ferry: %v\n", err)
		return exitBadImage
	default:
		fmt.Fprintf(os.Stderr, "ferry: %v\n", err)
		return exitFailure
	}
}

type usageError struct{ error }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "ferry",
		Short:         "Carry VM disk images into KubeVirt: fetch, convert to RAW, verify, upload",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newConvertCmd(), newInspectCmd(), newImportCmd())
	root.AddCommand(newVMCmd(), newVerifyCmd())
	return root
}

func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s: expects %d argument(s), got %d (see --help)", cmd.Name(), n, len(args))}
		}
		return nil
	}
}
