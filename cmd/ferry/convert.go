package main

import (
	"fmt"
	"os"
	"sync/atomic"

	"github.com/spf13/cobra"

	"github.com/hikube/ferry/pkg/pipeline"
	"github.com/hikube/ferry/pkg/progress"
)

type convertFlags struct {
	src          sourceFlags
	workers      int
	output       string
	quiet        bool
	digest       bool
	targetIsZero bool
	noSync       bool
}

func newConvertCmd() *cobra.Command {
	var f convertFlags
	cmd := &cobra.Command{
		Use:   "convert SRC DST",
		Short: "Convert a disk image to RAW (like qemu-img convert -O raw)",
		Long: `Convert a disk image (qcow2, vmdk, vhd, vhdx, vdi, iso, raw) to RAW.

SRC is a path or file:// URL, an http(s):// URL, s3://BUCKET/KEY, or - for
stdin. Remote sources are read with parallel ranged requests and converted
as they arrive, each byte fetched once and hashed in order (--checksum).
gzip, xz, zstd and bzip2 wrappers and OVA archives are unwrapped.

DST is a file (written sparse, under a temporary name renamed at the end),
a block device, or - for stdout (an in-order stream, zeros included).
The format is detected by content; --format skips detection.
Backing files, VMDK extents and VHD parents are followed only inside the
source's directory (or --allow-dir), never for remote sources.`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runConvert(cmd, args[0], args[1], f)
		},
	}
	fl := cmd.Flags()
	f.src.register(fl)
	fl.IntVarP(&f.workers, "workers", "w", 0, "parallel workers (default: number of CPUs)")
	fl.StringVarP(&f.output, "output", "o", "", "report format: json (printed on stdout when DST is a file)")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "no progress output")
	fl.BoolVar(&f.digest, "digest", false, "compute the SHA-256 of the RAW image (on by default with --output json)")
	fl.BoolVar(&f.targetIsZero, "target-is-zero", false, "a block-device DST already reads as zeros: skip writing holes")
	fl.BoolVar(&f.noSync, "no-sync", false, "do not fsync DST at the end")
	return cmd
}

func runConvert(cmd *cobra.Command, src, dst string, f convertFlags) error {
	if f.output != "" && f.output != "json" {
		return usageError{fmt.Errorf("--output %q: only json is supported", f.output)}
	}
	if f.output == "json" && dst == "-" {
		return usageError{fmt.Errorf("--output json needs a file DST: stdout carries the image")}
	}
	fetched := &progress.Counter{}
	fetch, conv := counterGauge{"fetch", fetched}, &meter{stage: "convert"}
	fo, err := f.src.options(fetched)
	if err != nil {
		return err
	}
	var streamed atomic.Bool
	job := pipeline.ConvertJob{
		Source:       src,
		Destination:  dst,
		Stdout:       os.Stdout,
		Format:       f.src.format,
		AllowDir:     f.src.allowDir,
		Fetch:        fo,
		Workers:      f.workers,
		Digest:       f.digest || f.output == "json",
		TargetIsZero: f.targetIsZero,
		NoSync:       f.noSync,
		Progress:     conv,
		OnStart: func(in *pipeline.Input) {
			conv.total.Store(in.VirtualSize())
			streamed.Store(in.Streamed())
		},
	}
	if err := job.Validate(); err != nil {
		return usageError{fmt.Errorf("convert: %w", err)}
	}
	r := startProgressPick(f.quiet, func() gauge {
		// A stream's virtual size is unknown until its end: show how much
		// of the source has arrived instead.
		if conv.total.Load() <= 0 || streamed.Load() {
			if _, ft := fetch.Load(); ft > 0 {
				return fetch
			}
		}
		return conv
	})
	rep, err := pipeline.Convert(cmd.Context(), job)
	r.Stop()
	if err != nil {
		return err
	}
	if f.output == "json" {
		return printJSON(os.Stdout, rep)
	}
	if !f.quiet {
		fmt.Fprintf(os.Stderr, "converted %s (%s, %s virtual, %s data) to %s in %.2fs\n",
			rep.Source, rep.Format, humanBytes(rep.VirtualSize), humanBytes(rep.AllocatedBytes), dst, rep.DurationSeconds)
		if rep.Checksum != "" {
			fmt.Fprintf(os.Stderr, "source checksum verified: %s\n", rep.Checksum)
		}
		if rep.RawSHA256 != "" {
			fmt.Fprintf(os.Stderr, "raw sha256: %s\n", rep.RawSHA256)
		}
	}
	return nil
}
