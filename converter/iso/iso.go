// Package iso recognises ISO 9660 images. They convert as raw (the bytes
// are the disk); inspect reports the volume label, read with go-diskfs.
package iso

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/converter/raw"
)

// Type names ISO images. qemu-img calls them raw; ferry reports iso so
// users and the uploader (optical disks) can tell them apart.
const Type format.Type = "iso"

const (
	sector  = 2048
	pvdAt   = 16 * sector
	minSize = pvdAt + sector
)

// Probe looks for the "CD001" standard identifier of the first volume
// descriptor at sector 16.
func Probe(r io.ReaderAt, size int64) bool {
	if size < minSize {
		return false
	}
	var b [7]byte
	if _, err := r.ReadAt(b[:], pvdAt); err != nil {
		return false
	}
	// Type 0-3 or 255, "CD001", version 1.
	return (b[0] <= 3 || b[0] == 255) && string(b[1:6]) == "CD001" && b[6] == 1
}

// Image is an ISO: raw bytes plus a label.
type Image struct {
	*raw.Image
	label string
}

// Open opens an ISO image.
func Open(f format.File, _ format.Options) (*Image, error) {
	if !Probe(f, f.Size()) {
		return nil, fmt.Errorf("iso: no ISO 9660 volume descriptor at sector 16: %w", format.ErrWrongType)
	}
	r, err := raw.OpenAs(f, Type)
	if err != nil {
		return nil, err
	}
	return &Image{Image: r, label: Label(f, f.Size())}, nil
}

// Label returns the volume identifier through go-diskfs, falling back to
// the primary volume descriptor field when go-diskfs refuses the image.
func Label(r io.ReaderAt, size int64) (label string) {
	label = pvdLabel(r)
	defer func() {
		// go-diskfs is not hardened against hostile images: a panic there
		// costs us the label, not the conversion.
		_ = recover()
	}()
	fsys, err := iso9660.Read(&storage{r: r, size: size}, size, 0, sector)
	if err != nil {
		return label
	}
	if l := strings.TrimSpace(fsys.Label()); l != "" {
		return l
	}
	return label
}

func pvdLabel(r io.ReaderAt) string {
	var pvd [sector]byte
	if _, err := r.ReadAt(pvd[:], pvdAt); err != nil {
		return ""
	}
	if pvd[0] != 1 {
		return ""
	}
	return strings.TrimSpace(string(bytes.TrimRight(pvd[40:72], "\x00 ")))
}

// Info adds the label to the raw description.
func (img *Image) Info() format.Info {
	info := img.Image.Info()
	info.Label = img.label
	info.Subformat = "iso9660"
	return info
}

// storage adapts an io.ReaderAt to go-diskfs' read-only backend.
type storage struct {
	r    io.ReaderAt
	size int64
	off  int64
}

var _ backend.Storage = (*storage)(nil)

func (s *storage) ReadAt(p []byte, off int64) (int, error) { return s.r.ReadAt(p, off) }
func (s *storage) Read(p []byte) (int, error) {
	n, err := s.r.ReadAt(p, s.off)
	s.off += int64(n)
	return n, err
}
func (s *storage) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		s.off = off
	case io.SeekCurrent:
		s.off += off
	case io.SeekEnd:
		s.off = s.size + off
	}
	return s.off, nil
}
func (s *storage) Close() error               { return nil }
func (s *storage) Stat() (fs.FileInfo, error) { return fileInfo{size: s.size}, nil }
func (s *storage) Sys() (*os.File, error)     { return nil, errors.New("iso: no OS file") }
func (s *storage) Path() string               { return "" }
func (s *storage) Writable() (backend.WritableFile, error) {
	return nil, backend.ErrIncorrectOpenMode
}

type fileInfo struct{ size int64 }

func (fi fileInfo) Name() string       { return "image.iso" }
func (fi fileInfo) Size() int64        { return fi.size }
func (fi fileInfo) Mode() fs.FileMode  { return 0o444 }
func (fi fileInfo) ModTime() time.Time { return time.Time{} }
func (fi fileInfo) IsDir() bool        { return false }
func (fi fileInfo) Sys() any           { return nil }
