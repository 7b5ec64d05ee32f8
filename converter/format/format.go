// Package format holds what every disk-image reader in ferry shares: the
// image interface (go-qcow2reader's image.Image), the options a reader is
// opened with, the confined resolver for files an image names (backing
// files, extents, parents), the inspect report, and the error kinds.
//
// Format packages (qcow2, vmdk, vhd, vhdx, vdi, iso, raw) depend on this
// package only; the converter package ties them together.
package format

import (
	"errors"
	"fmt"
	"io"

	"github.com/lima-vm/go-qcow2reader/image"
)

// Image is the one interface every format implements: ReadAt over the
// virtual disk, Extent for allocation status, Size, Type, Readable, Close.
type Image = image.Image

// Extent describes a run of the virtual disk with one status.
type Extent = image.Extent

// Type names a format, as qemu-img spells it ("qcow2", "vmdk", "vpc", ...).
type Type = image.Type

// Error kinds. Readers wrap them with %w and a precise message, so callers
// can tell a hostile or broken image from an I/O failure.
var (
	// ErrCorrupt: the image contradicts itself or its file (tables beyond
	// EOF, impossible sizes, bad signatures inside the structure).
	ErrCorrupt = errors.New("corrupt image")
	// ErrUnsupported: a valid image using a feature ferry does not read
	// (encryption, dirty log, external data file, ...).
	ErrUnsupported = errors.New("unsupported image feature")
	// ErrUnsafeReference: the image names a file outside the allowed
	// directory (absolute path, ".." escape, symlink leading out).
	ErrUnsafeReference = errors.New("unsafe file reference")
	// ErrReferenceLoop: a backing/parent chain refers back to itself or is
	// deeper than MaxChainDepth.
	ErrReferenceLoop = errors.New("reference loop")
	// ErrWrongType: the data is not of the format asked for.
	ErrWrongType = image.ErrWrongType
)

// Corruptf returns an error wrapping ErrCorrupt.
func Corruptf(f string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(f, args...))
}

// Unsupportedf returns an error wrapping ErrUnsupported.
func Unsupportedf(f string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnsupported, fmt.Sprintf(f, args...))
}

// MaxVirtualSize bounds the virtual size any reader accepts: qemu's own
// limit for qcow2 is 2^61 - 1 bytes... we keep a saner 64 PiB, far above any real disk
// and far below values that overflow offset arithmetic.
const MaxVirtualSize int64 = 1 << 56

// MaxChainDepth bounds backing/parent chains (qemu has no limit; loops and
// absurd depths are refused).
const MaxChainDepth = 64

// File is an open file an image is read from: the top image, or one it
// names. os.File satisfies ReaderAt/Closer/Name; Size is explicit because
// network sources have no Stat.
type File interface {
	io.ReaderAt
	io.Closer
	// Name is the path used to resolve relative references and to name the
	// file in errors and reports.
	Name() string
	// Size in bytes of the file.
	Size() int64
}

// Resolver opens files that an image names. from is the Name() of the file
// holding the reference, ref the reference as written in the image.
// Implementations must refuse anything outside their allowed directory with
// an error wrapping ErrUnsafeReference.
type Resolver interface {
	Open(from, ref string) (File, error)
}

// OpenFunc opens a nested image (a backing file or parent) of the given
// type ("" to detect), with the same options and depth+1. The converter
// package provides it so format packages need not import one another.
type OpenFunc func(f File, t Type, opts Options) (Image, error)

// Options are given to every format's Open.
type Options struct {
	// Resolver for referenced files; nil refuses every reference with
	// ErrUnsafeReference.
	Resolver Resolver
	// Open opens nested images (backing files, parents); nil refuses them.
	Open OpenFunc
	// Depth of this image in a chain (0 for the top image).
	Depth int
	// Chain holds the canonical names of the images above this one, for
	// loop detection.
	Chain []string
}

// Info is what `ferry inspect` reports, like `qemu-img info`.
type Info struct {
	Format         Type   `json:"format"`
	Subformat      string `json:"subformat,omitempty"`
	VirtualSize    int64  `json:"virtual_size"`
	FileSize       int64  `json:"file_size"`
	AllocatedBytes int64  `json:"allocated_bytes"`
	// ClusterSize is the allocation unit: qcow2 cluster, VMDK grain,
	// VHD/VHDX/VDI block. 0 when the format has none.
	ClusterSize int64  `json:"cluster_size,omitempty"`
	Compression string `json:"compression,omitempty"`
	// Backing is the backing file (qcow2) or parent (VHD/VHDX differencing).
	Backing       string `json:"backing_file,omitempty"`
	BackingFormat string `json:"backing_format,omitempty"`
	// Extents lists the files a VMDK descriptor names.
	Extents []ExtentFile `json:"extents,omitempty"`
	// Label is the ISO volume identifier.
	Label string `json:"label,omitempty"`
	// Details carries format-specific fields (version, features, ...).
	Details map[string]any `json:"details,omitempty"`
	// BackingInfo is the inspected backing image, when it could be opened.
	BackingInfo *Info `json:"backing_info,omitempty"`
}

// ExtentFile is one extent of a VMDK descriptor.
type ExtentFile struct {
	Access  string `json:"access"`           // RW, RDONLY, NOACCESS
	Sectors int64  `json:"sectors"`          // size in 512-byte sectors
	Type    string `json:"type"`             // SPARSE, FLAT, ZERO, VMFS, ...
	File    string `json:"file,omitempty"`   // file name as written
	Offset  int64  `json:"offset,omitempty"` // FLAT: start sector in the file
}

// Inspector is implemented by images that can describe themselves.
type Inspector interface {
	Info() Info
}
