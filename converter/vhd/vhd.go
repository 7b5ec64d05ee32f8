// Package vhd reads Microsoft Virtual PC / Hyper-V VHD images (qemu's
// "vpc" driver): fixed, dynamic and differencing.
//
// Sizes and bytes follow qemu-img 7.2's vpc driver:
//   - the virtual size is the CHS geometry (cyls*heads*secs*512) unless the
//     creator application is one qemu trusts for current_size ("win ",
//     "qem2", "d2v ", "CTXS", "tap\0") or the geometry is the maximum
//     65535x16x255; larger than 2040 GiB is refused;
//   - the footer checksum must be valid;
//   - dynamic images ignore the per-block sector bitmap (qemu reads the
//     whole block from the file);
//   - fixed images read the file directly, zeros past its end (so a
//     geometry larger than the data exposes the footer, as in qemu).
//
// qemu has no differencing support (it reads such an image as a dynamic one
// with no parent); ferry follows the specification there: sectors whose
// bitmap bit is clear, and unallocated blocks, come from the parent.
package vhd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/hikube/ferry/converter/format"
)

// Type is qemu-img's name for the format.
const Type format.Type = "vpc"

const (
	sectorSize    = 512
	footerSize    = 512
	dynHeaderSize = 1024

	diskFixed        = 2
	diskDynamic      = 3
	diskDifferencing = 4

	// maxSectors is qemu's VHD_MAX_SECTORS (2040 GiB).
	maxSectors = 0xff000000
	// maxGeometry is 65535x16x255: images at the CHS maximum are sized by
	// current_size whatever their creator.
	maxGeometry = 65535 * 16 * 255

	batUnallocated = 0xFFFFFFFF
	// maxBATEntries bounds the in-memory BAT (256 MiB); 2040 GiB in the
	// default 2 MiB blocks needs 1 Mi entries.
	maxBATEntries = 1 << 26
)

var cookie = []byte("conectix")

// currentSizeApps are the creator applications for which qemu 7.2 uses the
// footer's current_size instead of the CHS geometry.
var currentSizeApps = map[string]bool{
	"win ":    true, // Hyper-V
	"qem2":    true, // qemu with force_size
	"d2v ":    true, // Disk2vhd
	"CTXS":    true, // XenConverter
	"tap\x00": true, // XenServer
}

// footer is the 512-byte hard disk footer (big-endian).
type footer struct {
	features    uint32
	version     uint32
	dataOffset  uint64
	timestamp   uint32
	creatorApp  string
	creatorVer  uint32
	creatorOS   string
	origSize    uint64
	currentSize uint64
	cyls        uint16
	heads       uint8
	secs        uint8
	diskType    uint32
	checksum    uint32
	uuid        [16]byte
}

func parseFooter(b []byte) footer {
	be := binary.BigEndian
	var f footer
	f.features = be.Uint32(b[8:])
	f.version = be.Uint32(b[12:])
	f.dataOffset = be.Uint64(b[16:])
	f.timestamp = be.Uint32(b[24:])
	f.creatorApp = string(b[28:32])
	f.creatorVer = be.Uint32(b[32:])
	f.creatorOS = string(b[36:40])
	f.origSize = be.Uint64(b[40:])
	f.currentSize = be.Uint64(b[48:])
	f.cyls = be.Uint16(b[56:])
	f.heads = b[58]
	f.secs = b[59]
	f.diskType = be.Uint32(b[60:])
	f.checksum = be.Uint32(b[64:])
	copy(f.uuid[:], b[68:84])
	return f
}

// checksum is the one's complement of the byte sum, the 4-byte checksum
// field at skip counted as zero.
func checksum(b []byte, skip int) uint32 {
	var s uint32
	for i, c := range b {
		if i >= skip && i < skip+4 {
			continue
		}
		s += uint32(c)
	}
	return ^s
}

func validFooter(b []byte) bool {
	return len(b) == footerSize && bytes.Equal(b[:8], cookie) &&
		checksum(b, 64) == binary.BigEndian.Uint32(b[64:])
}

// Probe reports a VHD: a footer copy with a valid checksum at offset 0
// (dynamic, differencing), or a fixed-disk footer in the last 512 bytes.
func Probe(r io.ReaderAt, size int64) bool {
	if size < footerSize {
		return false
	}
	b := make([]byte, footerSize)
	if _, err := r.ReadAt(b, 0); err == nil && validFooter(b) {
		return true
	}
	if _, err := r.ReadAt(b, size-footerSize); err != nil && err != io.EOF {
		return false
	}
	return validFooter(b) && binary.BigEndian.Uint32(b[60:]) == diskFixed
}

// Image is an open VHD.
type Image struct {
	f        format.File
	fileSize int64
	ft       footer
	sizeSrc  string // "chs" or "current_size"
	size     int64

	// Dynamic and differencing.
	blockSize   int64
	bitmapSize  int64
	bat         []uint32 // the entries the virtual size needs
	allocated   int64    // allocated blocks among bat
	hdrChecksum bool     // dynamic header checksum valid
	hdrVersion  uint32

	// Differencing.
	parent     format.Image
	parentRef  string // the reference the parent was opened by
	parentName string // the parent unicode name as written
	parentUUID [16]byte
	bitmaps    *bitmapCache

	holes format.Holes

	closeOnce sync.Once
	closeErr  error
}

// Open reads the VHD in f. The image owns f and, for a differencing
// image, the parent chain: Close closes them all. On error f is left open.
func Open(f format.File, opts format.Options) (*Image, error) {
	fileSize := f.Size()
	if fileSize < footerSize {
		return nil, fmt.Errorf("%w: vpc: %s is %d bytes, smaller than a VHD footer", format.ErrWrongType, f.Name(), fileSize)
	}
	img := &Image{f: f, fileSize: fileSize}
	b := make([]byte, footerSize)
	if err := readFull(f, b, 0); err != nil {
		return nil, err
	}
	// Like qemu, a footer copy at offset 0 means a dynamic or differencing
	// image; only without one is the end of the file looked at. A copy
	// claiming a fixed disk is not trusted: guest data of a fixed disk may
	// start with anything.
	if !bytes.Equal(b[:8], cookie) || binary.BigEndian.Uint32(b[60:]) == diskFixed {
		if err := readFull(f, b, fileSize-footerSize); err != nil {
			return nil, err
		}
		if !bytes.Equal(b[:8], cookie) {
			return nil, fmt.Errorf("%w: vpc: no \"conectix\" footer at offset 0 or at the end of %s", format.ErrWrongType, f.Name())
		}
		if t := binary.BigEndian.Uint32(b[60:]); t != diskFixed {
			return nil, format.Corruptf("vpc: footer at the end of the file has disk type %d, want 2 (fixed): a dynamic image needs its footer copy at offset 0", t)
		}
	}
	if got, want := checksum(b, 64), binary.BigEndian.Uint32(b[64:]); got != want {
		return nil, format.Corruptf("vpc: footer checksum is %#08x, computed %#08x", want, got)
	}
	img.ft = parseFooter(b)

	sectors := int64(img.ft.cyls) * int64(img.ft.heads) * int64(img.ft.secs)
	img.sizeSrc = "chs"
	if currentSizeApps[img.ft.creatorApp] || sectors == maxGeometry {
		sectors = int64(img.ft.currentSize / sectorSize)
		img.sizeSrc = "current_size"
	}
	if sectors > maxSectors {
		return nil, format.Unsupportedf("vpc: virtual size %d sectors (from %s) exceeds the VHD limit of 2040 GiB", sectors, img.sizeSrc)
	}
	img.size = sectors * sectorSize

	img.holes = format.HolesOf(f)
	switch img.ft.diskType {
	case diskFixed:
		return img, nil
	case diskDynamic, diskDifferencing:
	default:
		return nil, format.Unsupportedf("vpc: disk type %d (want 2 fixed, 3 dynamic or 4 differencing)", img.ft.diskType)
	}
	hdr, err := img.openDynamic()
	if err != nil {
		return nil, err
	}
	if img.ft.diskType == diskDifferencing {
		if err := img.openParent(hdr, opts); err != nil {
			return nil, err
		}
	}
	return img, nil
}

// readFull reads exactly len(b) bytes at off: structures the image declares
// must be inside the file.
func readFull(f format.File, b []byte, off int64) error {
	n, err := f.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return format.Corruptf("vpc: %d bytes at offset %d: file ends at %d", len(b), off, f.Size())
	}
	return fmt.Errorf("vpc: read %d bytes at %d: %w", len(b), off, err)
}

// openDynamic reads the dynamic disk header and the BAT.
func (img *Image) openDynamic() ([]byte, error) {
	off := img.ft.dataOffset
	if off > uint64(img.fileSize) || uint64(img.fileSize)-off < dynHeaderSize {
		return nil, format.Corruptf("vpc: dynamic header at offset %d is beyond the end of the file (%d bytes)", off, img.fileSize)
	}
	hdr := make([]byte, dynHeaderSize)
	if err := readFull(img.f, hdr, int64(off)); err != nil {
		return nil, err
	}
	if string(hdr[:8]) != "cxsparse" {
		return nil, format.Corruptf("vpc: no \"cxsparse\" dynamic header at offset %d", off)
	}
	be := binary.BigEndian
	// qemu does not check this checksum; neither do we refuse on it, but
	// every field used below is checked against the file on its own.
	img.hdrChecksum = checksum(hdr, 36) == be.Uint32(hdr[36:])
	img.hdrVersion = be.Uint32(hdr[24:])
	tableOff := be.Uint64(hdr[16:])
	entries := uint64(be.Uint32(hdr[28:]))
	bs := uint64(be.Uint32(hdr[32:]))
	if bs < sectorSize || bs&(bs-1) != 0 {
		return nil, format.Corruptf("vpc: block size %d is not a power of two of at least 512", bs)
	}
	img.blockSize = int64(bs)
	img.bitmapSize = bitmapBytes(img.blockSize, img.ft.diskType == diskDifferencing)

	need := uint64(img.size+img.blockSize-1) / bs
	if entries > (1<<31-1)/4 {
		// qemu's limit: the BAT must be readable in one int-sized read.
		return nil, format.Corruptf("vpc: %d BAT entries (qemu reads at most %d)", entries, (1<<31-1)/4)
	}
	if entries*bs < uint64(img.size) {
		return nil, format.Corruptf("vpc: BAT has %d entries of %d bytes, %d needed for the virtual size %d", entries, bs, need, img.size)
	}
	fs := uint64(img.fileSize)
	if tableOff > fs || entries*4 > fs-tableOff {
		return nil, format.Corruptf("vpc: BAT of %d entries at offset %d is beyond the end of the file (%d bytes)", entries, tableOff, fs)
	}
	if need > maxBATEntries {
		return nil, format.Unsupportedf("vpc: %d blocks of %d bytes: more than %d BAT entries", need, bs, maxBATEntries)
	}
	img.bat = make([]uint32, need)
	// Every entry is checked, the unused ones too, as qemu does: a block
	// past the end of the file means a truncated image.
	buf := make([]byte, min(64<<10, entries*4))
	for i := uint64(0); i < entries; {
		n := min(entries-i, uint64(len(buf)/4))
		if err := readFull(img.f, buf[:n*4], int64(tableOff+i*4)); err != nil {
			return nil, err
		}
		for j := uint64(0); j < n; j++ {
			e := be.Uint32(buf[j*4:])
			if i+j < need {
				img.bat[i+j] = e
			}
			if e == batUnallocated {
				continue
			}
			if end := uint64(e)*sectorSize + uint64(img.bitmapSize) + bs; end > fs {
				return nil, format.Corruptf("vpc: BAT entry %d: block at offset %d ends at %d, beyond the end of the file (%d bytes): truncated image", i+j, uint64(e)*sectorSize, end, fs)
			}
			if i+j < need {
				img.allocated++
			}
		}
		i += n
	}
	return hdr, nil
}

// bitmapBytes is the size of the sector bitmap before each block's data.
// For dynamic images it is qemu's formula, which truncates to 0 for blocks
// under 4 KiB: qemu then reads data right at the BAT offset, and so do we.
// Differencing images use the bitmap, so they get the specification's
// size: one bit per sector, rounded up to a sector.
func bitmapBytes(blockSize int64, differencing bool) int64 {
	if differencing {
		bits := blockSize / sectorSize
		return ((bits+7)/8 + sectorSize - 1) / sectorSize * sectorSize
	}
	return (blockSize/(8*sectorSize) + 511) &^ 511
}

// Size is the virtual size in bytes.
func (img *Image) Size() int64 { return img.size }

// Type is "vpc".
func (img *Image) Type() format.Type { return Type }

// Readable is nil: every image Open accepts can be read.
func (img *Image) Readable() error { return nil }

// Close closes the file and the parent chain.
func (img *Image) Close() error {
	img.closeOnce.Do(func() {
		if img.parent != nil {
			img.closeErr = img.parent.Close()
		}
		if err := img.f.Close(); err != nil && img.closeErr == nil {
			img.closeErr = err
		}
	})
	return img.closeErr
}

func (img *Image) subformat() string {
	switch img.ft.diskType {
	case diskFixed:
		return "fixed"
	case diskDifferencing:
		return "differencing"
	}
	return "dynamic"
}

// Info describes the image like `qemu-img info`.
func (img *Image) Info() format.Info {
	in := format.Info{
		Format:      Type,
		Subformat:   img.subformat(),
		VirtualSize: img.size,
		FileSize:    img.fileSize,
	}
	d := map[string]any{
		"creator_app":     strings.TrimRight(img.ft.creatorApp, "\x00"),
		"creator_version": fmt.Sprintf("%d.%d", img.ft.creatorVer>>16, img.ft.creatorVer&0xffff),
		"creator_os":      strings.TrimRight(img.ft.creatorOS, "\x00"),
		"geometry":        fmt.Sprintf("%d/%d/%d", img.ft.cyls, img.ft.heads, img.ft.secs),
		"current_size":    img.ft.currentSize,
		"original_size":   img.ft.origSize,
		"size_from":       img.sizeSrc,
		"uuid":            formatUUID(img.ft.uuid),
	}
	in.Details = d
	if img.ft.diskType == diskFixed {
		in.AllocatedBytes = min(img.size, img.fileSize-footerSize)
		return in
	}
	in.ClusterSize = img.blockSize
	in.AllocatedBytes = img.allocated * img.blockSize
	d["block_count"] = len(img.bat)
	d["header_version"] = fmt.Sprintf("%d.%d", img.hdrVersion>>16, img.hdrVersion&0xffff)
	if !img.hdrChecksum {
		d["header_checksum_valid"] = false
	}
	if img.ft.diskType == diskDifferencing {
		in.Backing = img.parentRef
		d["parent_name"] = img.parentName
		d["parent_uuid"] = formatUUID(img.parentUUID)
		if img.parent != nil {
			in.BackingFormat = string(img.parent.Type())
			if pi, ok := img.parent.(format.Inspector); ok {
				bi := pi.Info()
				in.BackingInfo = &bi
			}
		}
	}
	return in
}

func formatUUID(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
