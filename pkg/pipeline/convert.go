// Package pipeline wires the stages together: a source (importer), the
// convert engine (converter) and a target (uploader). Jobs are plain
// structs with Validate, so the CLI, a Kubernetes Job and tests build them
// the same way.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/hikube/ferry/converter"
	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/importer"
	"github.com/hikube/ferry/uploader"
)

// ConvertJob converts one image to RAW.
type ConvertJob struct {
	// Source is a path, file://, http(s)://, s3:// URL, or "-" (stdin).
	Source string
	// Destination is a path (file or block device), or "-" for Stdout.
	Destination string
	// Stdout receives the image when Destination is "-".
	Stdout io.Writer
	// Format skips detection (qemu-img -f).
	Format string
	// AllowDir is where backing files, extents and parents may be
	// followed; default: a local source's directory.
	AllowDir string
	// Fetch configures how the source is fetched and verified.
	Fetch importer.Options
	// Workers, ChunkSize: engine parallelism (0: defaults).
	Workers   int
	ChunkSize int64
	// Digest computes raw_sha256.
	Digest bool
	// TargetIsZero: a block device already reads as zeros, holes are
	// skipped.
	TargetIsZero bool
	// NoSync skips the final fsync.
	NoSync bool
	// Progress receives converted virtual bytes; OnStart is told what is
	// being converted before conversion starts (virtual size -1 for a
	// stream).
	Progress converter.Progress
	OnStart  func(in *Input)
}

// Validate checks the job before any I/O.
func (j *ConvertJob) Validate() error {
	if j.Source == "" {
		return errors.New("no source")
	}
	if j.Destination == "" {
		return errors.New("no destination")
	}
	if j.Destination == "-" && j.Stdout == nil {
		return errors.New("destination - needs a stdout writer")
	}
	if j.Workers < 0 {
		return fmt.Errorf("workers must be positive, got %d", j.Workers)
	}
	if j.Format != "" {
		known := false
		for _, n := range converter.TypeNames() {
			if n == j.Format {
				known = true
			}
		}
		if !known {
			return fmt.Errorf("unknown format %q (known: %v)", j.Format, converter.TypeNames())
		}
	}
	if j.Destination != "-" && isLocal(j.Source) {
		if a, err := filepath.Abs(strings.TrimPrefix(j.Source, "file://")); err == nil {
			if b, err := filepath.Abs(j.Destination); err == nil && a == b {
				return errors.New("source and destination are the same file")
			}
		}
	}
	f := j.Fetch // Validate fills defaults: keep the job's as given
	return f.Validate()
}

// Report is what a conversion did; the CLI prints it with --output json.
type Report struct {
	Source      string      `json:"source"`
	Destination string      `json:"destination"`
	Format      format.Type `json:"format"`
	Wrapper     string      `json:"wrapper,omitempty"`
	OVADisk     string      `json:"ova_disk,omitempty"`
	// OVAManifestChecksum is the disk's digest from the OVA's manifest,
	// verified.
	OVAManifestChecksum string `json:"ova_manifest_checksum,omitempty"`
	VirtualSize         int64  `json:"virtual_size"`
	AllocatedBytes      int64  `json:"allocated_bytes"`
	BytesWritten        int64  `json:"bytes_written"`
	RawSHA256           string `json:"raw_sha256,omitempty"`
	// SourceSHA256 is the digest of the source file as fetched (remote
	// sources, stdin, or when a checksum was asked for).
	SourceSHA256 string `json:"source_sha256,omitempty"`
	// Checksum is the verified "alg:hex" the user asked for.
	Checksum        string  `json:"checksum_verified,omitempty"`
	BytesFetched    int64   `json:"bytes_fetched,omitempty"`
	Requests        int64   `json:"requests,omitempty"`
	Retries         int64   `json:"retries,omitempty"`
	DurationSeconds float64 `json:"duration_seconds"`
}

// Convert runs a ConvertJob. On failure (a checksum mismatch included)
// nothing is left at Destination that looks complete.
func Convert(ctx context.Context, j ConvertJob) (*Report, error) {
	if err := j.Validate(); err != nil {
		return nil, err
	}
	start := time.Now()
	in, err := OpenInput(ctx, j.Source, InputOptions{Fetch: j.Fetch, Format: j.Format, AllowDir: j.AllowDir})
	if err != nil {
		return nil, err
	}
	defer in.Close()
	if j.OnStart != nil {
		j.OnStart(in)
	}
	o := converter.Options{Workers: j.Workers, ChunkSize: j.ChunkSize, Digest: j.Digest, Progress: j.Progress}
	var res *converter.Result
	var dig importer.Digests
	if j.Destination == "-" {
		o.Stream = j.Stdout
		if res, err = in.Convert(ctx, o); err != nil {
			return nil, fmt.Errorf("convert %s: %w", in.Name, err)
		}
		// The stream is out; a mismatch still fails the command.
		if dig, err = in.Verify(ctx); err != nil {
			return nil, fmt.Errorf("verify %s: %w", in.Name, err)
		}
	} else {
		size := max(in.VirtualSize(), 0)
		dst, err := uploader.CreateFile(j.Destination, size, uploader.FileOptions{NoSync: j.NoSync})
		if err != nil {
			return nil, fmt.Errorf("create %s: %w", j.Destination, err)
		}
		o.WriterAt = dst
		o.WriteZeros = dst.IsDevice() && !j.TargetIsZero
		if res, err = in.Convert(ctx, o); err != nil {
			dst.Abort()
			return nil, fmt.Errorf("convert %s: %w", in.Name, err)
		}
		if dig, err = in.Verify(ctx); err != nil {
			dst.Abort()
			return nil, fmt.Errorf("verify %s: %w", in.Name, err)
		}
		if err := dst.Commit(); err != nil {
			return nil, fmt.Errorf("write %s: %w", j.Destination, err)
		}
	}
	return &Report{
		Source:              in.Name,
		Destination:         j.Destination,
		Format:              res.Format,
		Wrapper:             string(in.Wrapper),
		OVADisk:             in.Member,
		OVAManifestChecksum: in.ManifestChecksum,
		VirtualSize:         res.VirtualSize,
		AllocatedBytes:      res.AllocatedBytes,
		BytesWritten:        res.BytesWritten,
		RawSHA256:           res.RawSHA256,
		SourceSHA256:        dig.SHA256,
		Checksum:            dig.Checksum,
		BytesFetched:        dig.BytesFetched,
		Requests:            dig.Requests,
		Retries:             dig.Retries,
		DurationSeconds:     time.Since(start).Seconds(),
	}, nil
}

// InspectReport is what `ferry inspect` prints: the image's description
// plus what was unwrapped around it.
type InspectReport struct {
	Source string `json:"source"`
	format.Info
	Wrapper  string             `json:"wrapper,omitempty"`
	OVADisk  string             `json:"ova_disk,omitempty"`
	OVADisks []importer.OVADisk `json:"ova_disks,omitempty"`
	// OVAManifest names the archive's manifest, checked on conversion.
	OVAManifest string `json:"ova_manifest,omitempty"`
}

// Inspect opens an image (any source OpenInput takes) and describes it.
// A streamed image (stdin, compressed) is described by its format only:
// its size is known once it has been read.
func Inspect(ctx context.Context, src string, o InputOptions) (*InspectReport, error) {
	in, err := OpenInput(ctx, src, o)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	rep := &InspectReport{Source: in.Name, Wrapper: string(in.Wrapper), OVADisk: in.Member, OVADisks: in.Disks, OVAManifest: in.Manifest}
	if in.Image == nil {
		rep.Info = format.Info{Format: in.Type, VirtualSize: -1}
	} else {
		rep.Info = converter.Info(in.Image)
	}
	return rep, nil
}
