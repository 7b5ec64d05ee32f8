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
	"os"
	"path/filepath"
	"time"

	"github.com/hikube/ferry/converter"
	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/uploader"
)

// ConvertJob converts one image to RAW.
type ConvertJob struct {
	// Source is a local path.
	Source string
	// Destination is a path (file or block device), or "-" for Stdout.
	Destination string
	// Stdout receives the image when Destination is "-".
	Stdout io.Writer
	// Format skips detection (qemu-img -f).
	Format string
	// AllowDir is where backing files, extents and parents may be
	// followed; default: the source's directory.
	AllowDir string
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
	// Progress receives converted virtual bytes; OnStart is told the
	// image's format and virtual size before conversion starts.
	Progress converter.Progress
	OnStart  func(t format.Type, virtualSize int64)
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
	if j.Destination != "-" && j.Source != "-" {
		if a, err := filepath.Abs(j.Source); err == nil {
			if b, err := filepath.Abs(j.Destination); err == nil && a == b {
				return errors.New("source and destination are the same file")
			}
		}
	}
	return nil
}

// Report is what a conversion did; the CLI prints it with --output json.
type Report struct {
	Source          string      `json:"source"`
	Destination     string      `json:"destination"`
	Format          format.Type `json:"format"`
	VirtualSize     int64       `json:"virtual_size"`
	AllocatedBytes  int64       `json:"allocated_bytes"`
	BytesWritten    int64       `json:"bytes_written"`
	RawSHA256       string      `json:"raw_sha256,omitempty"`
	DurationSeconds float64     `json:"duration_seconds"`
}

// Convert runs a ConvertJob. On failure nothing is left at Destination
// that looks complete.
func Convert(ctx context.Context, j ConvertJob) (*Report, error) {
	if err := j.Validate(); err != nil {
		return nil, err
	}
	start := time.Now()
	src, err := format.OpenFile(j.Source)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	img, err := converter.Open(src, converter.OpenOptions{Format: format.Type(j.Format), AllowDir: j.AllowDir})
	if err != nil {
		src.Close()
		return nil, fmt.Errorf("open %s: %w", j.Source, err)
	}
	defer img.Close()
	if j.OnStart != nil {
		j.OnStart(img.Type(), img.Size())
	}
	o := converter.Options{Workers: j.Workers, ChunkSize: j.ChunkSize, Digest: j.Digest, Progress: j.Progress}
	var res *converter.Result
	if j.Destination == "-" {
		o.Stream = j.Stdout
		res, err = converter.Convert(ctx, img, o)
		if err != nil {
			return nil, fmt.Errorf("convert %s: %w", j.Source, err)
		}
	} else {
		dst, err := uploader.CreateFile(j.Destination, img.Size(), uploader.FileOptions{NoSync: j.NoSync})
		if err != nil {
			return nil, fmt.Errorf("create %s: %w", j.Destination, err)
		}
		o.WriterAt = dst
		o.WriteZeros = dst.IsDevice() && !j.TargetIsZero
		res, err = converter.Convert(ctx, img, o)
		if err != nil {
			dst.Abort()
			return nil, fmt.Errorf("convert %s: %w", j.Source, err)
		}
		if err := dst.Commit(); err != nil {
			return nil, fmt.Errorf("write %s: %w", j.Destination, err)
		}
	}
	return &Report{
		Source:          j.Source,
		Destination:     j.Destination,
		Format:          res.Format,
		VirtualSize:     res.VirtualSize,
		AllocatedBytes:  res.AllocatedBytes,
		BytesWritten:    res.BytesWritten,
		RawSHA256:       res.RawSHA256,
		DurationSeconds: time.Since(start).Seconds(),
	}, nil
}

// Inspect opens an image and describes it.
func Inspect(path, fmtName, allowDir string) (format.Info, error) {
	src, err := format.OpenFile(path)
	if err != nil {
		return format.Info{}, fmt.Errorf("source: %w", err)
	}
	img, err := converter.Open(src, converter.OpenOptions{Format: format.Type(fmtName), AllowDir: allowDir})
	if err != nil {
		src.Close()
		return format.Info{}, fmt.Errorf("inspect %s: %w", path, err)
	}
	defer img.Close()
	info := converter.Info(img)
	if info.FileSize == 0 {
		if st, err := os.Stat(path); err == nil {
			info.FileSize = st.Size()
		}
	}
	return info, nil
}
