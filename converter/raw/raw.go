// Package raw reads raw disk images: the file is the disk. On local files
// Extent uses SEEK_DATA/SEEK_HOLE so holes in sparse files are neither read
// nor written.
package raw

import (
	"errors"
	"fmt"
	"io"

	"github.com/hikube/ferry/converter/format"
)

// Type is qemu-img's name for the format.
const Type format.Type = "raw"

// Image is a raw image over a File.
type Image struct {
	f     format.File
	size  int64
	holes format.Holes
	typ   format.Type
}

// Probe always succeeds: raw is the format of last resort.
func Probe(r io.ReaderAt, size int64) bool { return true }

// Open presents f as a raw image of f.Size() bytes.
func Open(f format.File, _ format.Options) (*Image, error) {
	return OpenAs(f, Type)
}

// OpenAs presents f as a raw image reporting type t (iso uses it).
func OpenAs(f format.File, t format.Type) (*Image, error) {
	size := f.Size()
	if size < 0 {
		return nil, fmt.Errorf("raw: size of %s unknown", f.Name())
	}
	return &Image{f: f, size: size, typ: t, holes: format.HolesOf(f)}, nil
}

// ReadAt reads the file.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("raw: negative offset")
	}
	if off >= img.size {
		return 0, io.EOF
	}
	want := len(p)
	if rem := img.size - off; int64(want) > rem {
		want = int(rem)
	}
	n, err := img.f.ReadAt(p[:want], off)
	if n == want && (err == nil || err == io.EOF) {
		if want < len(p) {
			return n, io.EOF
		}
		return n, nil
	}
	if err == nil || err == io.EOF {
		err = fmt.Errorf("%w: raw: short read at %d: file ended early", format.ErrCorrupt, off+int64(n))
	}
	return n, err
}

// Extent reports holes of local sparse files as Zero; anything else is
// allocated data.
func (img *Image) Extent(start, length int64) (format.Extent, error) {
	if start < 0 || length <= 0 || start+length > img.size {
		return format.Extent{}, fmt.Errorf("raw: extent %d+%d out of range (size %d)", start, length, img.size)
	}
	hole, n := img.holes.Probe(start, length)
	return format.Extent{Start: start, Length: n, Zero: hole, Allocated: !hole}, nil
}

// Size is the file size.
func (img *Image) Size() int64 { return img.size }

// Type is "raw" (or "iso" for ISO images).
func (img *Image) Type() format.Type { return img.typ }

// Readable always succeeds.
func (img *Image) Readable() error { return nil }

// Close closes the file.
func (img *Image) Close() error { return img.f.Close() }

// Info describes the image.
func (img *Image) Info() format.Info {
	info := format.Info{Format: img.typ, VirtualSize: img.size, FileSize: img.f.Size()}
	var alloc int64
	for off := int64(0); off < img.size; {
		e, err := img.Extent(off, img.size-off)
		if err != nil {
			break
		}
		if !e.Zero {
			alloc += e.Length
		}
		off += e.Length
	}
	info.AllocatedBytes = alloc
	return info
}
