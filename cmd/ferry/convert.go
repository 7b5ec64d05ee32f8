package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/pkg/pipeline"
)

type convertFlags struct {
	workers      int
	format       string
	output       string
	quiet        bool
	digest       bool
	allowDir     string
	targetIsZero bool
	noSync       bool
}

func newConvertCmd() *cobra.Command {
	var f convertFlags
	cmd := &cobra.Command{
		Use:   "convert SRC DST",
		Short: "Convert a disk image to RAW (like qemu-img convert -O raw)",
		Long: `Convert a disk image (qcow2, vmdk, vhd, vhdx, vdi, iso, raw) to RAW.

DST is a file (written sparse, under a temporary name renamed at the end),
a block device, or - for stdout (an in-order stream, zeros included).
The format is detected by content; --format skips detection.
Backing files, VMDK extents and VHD parents are followed only inside the
source's directory (or --allow-dir).`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runConvert(cmd, args[0], args[1], f)
		},
	}
	fl := cmd.Flags()
	fl.IntVarP(&f.workers, "workers", "w", 0, "parallel workers (default: number of CPUs)")
	fl.StringVarP(&f.format, "format", "f", "", "source format, skipping detection (qcow2, vmdk, vpc|vhd, vhdx, vdi, iso, raw)")
	fl.StringVarP(&f.output, "output", "o", "", "report format: json (printed on stdout when DST is a file)")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "no progress output")
	fl.BoolVar(&f.digest, "digest", false, "compute the SHA-256 of the RAW image (on by default with --output json)")
	fl.StringVar(&f.allowDir, "allow-dir", "", "directory inside which backing files, extents and parents may be followed (default: the source's directory)")
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
	m := &meter{stage: "convert"}
	job := pipeline.ConvertJob{
		Source:       src,
		Destination:  dst,
		Stdout:       os.Stdout,
		Format:       f.format,
		AllowDir:     f.allowDir,
		Workers:      f.workers,
		Digest:       f.digest || f.output == "json",
		TargetIsZero: f.targetIsZero,
		NoSync:       f.noSync,
		Progress:     m,
		OnStart:      func(_ format.Type, size int64) { m.total.Store(size) },
	}
	if err := job.Validate(); err != nil {
		return usageError{fmt.Errorf("convert: %w", err)}
	}
	r := startProgress(m, f.quiet)
	rep, err := pipeline.Convert(cmd.Context(), job)
	r.Stop()
	if err != nil {
		return err
	}
	if f.output == "json" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	if !f.quiet {
		fmt.Fprintf(os.Stderr, "converted %s (%s, %s virtual, %s data) to %s in %.2fs\n",
			src, rep.Format, humanBytes(rep.VirtualSize), humanBytes(rep.AllocatedBytes), dst, rep.DurationSeconds)
		if rep.RawSHA256 != "" {
			fmt.Fprintf(os.Stderr, "raw sha256: %s\n", rep.RawSHA256)
		}
	}
	return nil
}
