// Package converter turns disk images into RAW: it detects the format by
// content, opens the image through the format's reader (every reader
// presents format.Image), and runs the parallel convert engine, which knows
// nothing about formats.
package converter

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/converter/iso"
	"github.com/hikube/ferry/converter/raw"
)

// Format is one registered reader.
type Format struct {
	Type  format.Type
	Probe func(r io.ReaderAt, size int64) bool
	Open  func(f format.File, o format.Options) (format.Image, error)
}

// Formats are probed in this order; raw, which accepts anything, is last.
// ISO comes after the container formats: a VMDK or qcow2 never has CD001
// at 32 KiB, but an ISO may carry anything in its system area.
var Formats = []Format{
	// Container formats are registered in formats.go.
	{Type: iso.Type, Probe: iso.Probe, Open: func(f format.File, o format.Options) (format.Image, error) { return iso.Open(f, o) }},
	{Type: raw.Type, Probe: raw.Probe, Open: func(f format.File, o format.Options) (format.Image, error) { return raw.Open(f, o) }},
}

func lookup(t format.Type) (Format, bool) {
	for _, f := range Formats {
		if f.Type == t {
			return f, true
		}
	}
	// Accept qemu-img's aliases.
	switch t {
	case "vhd":
		return lookup("vpc")
	}
	return Format{}, false
}

// TypeNames lists the formats ferry reads.
func TypeNames() []string {
	var s []string
	for _, f := range Formats {
		s = append(s, string(f.Type))
	}
	return append(s, "vhd")
}

// Detect returns the format of the image in r by content. Compressed
// wrappers (gzip, xz, ...) are not formats: callers sniff them first.
func Detect(r io.ReaderAt, size int64) format.Type {
	for _, f := range Formats {
		if f.Probe(r, size) {
			return f.Type
		}
	}
	return raw.Type
}

// OpenOptions control how an image and the files it names are opened.
type OpenOptions struct {
	// Format skips detection when set (qemu-img -f).
	Format format.Type
	// AllowDir is the directory inside which backing files, extents and
	// parents may be followed. Empty means the directory of the image; a
	// source with no local directory (network, stdin) gets none, and any
	// reference is refused.
	AllowDir string
	// NoReferences refuses every reference, whatever AllowDir says.
	NoReferences bool
}

// Open detects (unless o.Format is set) and opens the image in f. The
// returned image owns f: closing it closes f and every file it opened.
func Open(f format.File, o OpenOptions) (format.Image, error) {
	var fo format.Options
	var res *format.DirResolver
	if !o.NoReferences {
		dir := o.AllowDir
		if dir == "" && filepath.IsAbs(f.Name()) {
			dir = filepath.Dir(f.Name())
		}
		if dir != "" {
			var err error
			if res, err = format.NewDirResolver(dir); err != nil {
				return nil, err
			}
			fo.Resolver = res
		}
	}
	fo.Open = openNested
	fo.Chain = []string{f.Name()}
	img, err := openWithType(f, o.Format, fo)
	if err != nil {
		if res != nil {
			res.Close()
		}
		return nil, err
	}
	if res == nil {
		return img, nil
	}
	// The resolver's directory handle lives as long as the image chain.
	return &owned{Image: img, res: res}, nil
}

type owned struct {
	format.Image
	res *format.DirResolver
}

func (o *owned) Close() error {
	err := o.Image.Close()
	o.res.Close()
	return err
}

func (o *owned) Info() format.Info { return Info(o.Image) }

func openNested(f format.File, t format.Type, o format.Options) (format.Image, error) {
	return openWithType(f, t, o)
}

func openWithType(f format.File, t format.Type, o format.Options) (format.Image, error) {
	if t == "" {
		t = Detect(f, f.Size())
	}
	ft, ok := lookup(t)
	if !ok {
		return nil, fmt.Errorf("unknown format %q (known: %v)", t, TypeNames())
	}
	img, err := ft.Open(f, o)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ft.Type, err)
	}
	if err := img.Readable(); err != nil {
		img.Close()
		return nil, fmt.Errorf("%s: %w", ft.Type, err)
	}
	return img, nil
}

// Info describes an open image like `qemu-img info`.
func Info(img format.Image) format.Info {
	if in, ok := img.(format.Inspector); ok {
		return in.Info()
	}
	return format.Info{Format: img.Type(), VirtualSize: img.Size()}
}
