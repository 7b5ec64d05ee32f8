// Package vdi reads VirtualBox VDI images (header version 1.1), static and
// dynamic, as qemu-img 7.2's vdi driver does:
//   - the virtual size is the header's disk size rounded up to a sector;
//   - block size must be 1 MiB, sector size 512, block map and data
//     offsets sector-aligned, and the image may not have a parent
//     (differencing VDIs are refused, like qemu);
//   - block map entries 0xFFFFFFFF (never allocated) and 0xFFFFFFFE
//     (discarded) read as zeros.
//
// Where qemu trusts the file blindly, ferry refuses: a block map entry
// whose data lies past the end of the file (qemu reads zeros there) is
// ErrCorrupt, and a non-zero "block extra" size (which qemu ignores and so
// misreads) is ErrUnsupported.
package vdi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/hikube/ferry/converter/format"
)

// Type is qemu-img's name for the format.
const Type format.Type = "vdi"

const (
	headerSize = 512
	sectorSize = 512
	signature  = 0xbeda107f
	version11  = 0x00010001
	blockSize  = 1 << 20 // the only block size qemu reads

	typeDynamic = 1
	typeStatic  = 2

	entryUnallocated = 0xFFFFFFFF
	entryDiscarded   = 0xFFFFFFFE

	// maxBlocks is qemu's VDI_BLOCKS_IN_IMAGE_MAX: the block map, rounded
	// to a sector, must fit in an int.
	maxBlocks = (1<<31 - sectorSize) / 4
	// maxDiskSize is qemu's VDI_DISK_SIZE_MAX.
	maxDiskSize = maxBlocks * blockSize
	// maxMapEntries bounds the in-memory block map (256 MiB, a 64 TiB
	// disk).
	maxMapEntries = 1 << 26
)

// header is the v1.1 header (little-endian), as qemu's VdiHeader.
type header struct {
	text           string
	version        uint32
	headerSize     uint32
	imageType      uint32
	imageFlags     uint32
	description    string
	offsetBmap     uint32
	offsetData     uint32
	cylinders      uint32
	heads          uint32
	sectors        uint32
	sectorSize     uint32
	diskSize       uint64
	blockSize      uint32
	blockExtra     uint32
	blocksInImage  uint32
	blocksAlloc    uint32
	uuidImage      [16]byte
	uuidLastSnap   [16]byte
	uuidLink       [16]byte
	uuidParent     [16]byte
	signatureFound bool
}

func cstring(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		b = b[:i]
	}
	return strings.TrimSpace(string(b))
}

func parseHeader(b []byte) header {
	le := binary.LittleEndian
	var h header
	h.text = cstring(b[0:0x40])
	h.signatureFound = le.Uint32(b[0x40:]) == signature
	h.version = le.Uint32(b[0x44:])
	h.headerSize = le.Uint32(b[0x48:])
	h.imageType = le.Uint32(b[0x4c:])
	h.imageFlags = le.Uint32(b[0x50:])
	h.description = cstring(b[0x54:0x154])
	h.offsetBmap = le.Uint32(b[0x154:])
	h.offsetData = le.Uint32(b[0x158:])
	h.cylinders = le.Uint32(b[0x15c:])
	h.heads = le.Uint32(b[0x160:])
	h.sectors = le.Uint32(b[0x164:])
	h.sectorSize = le.Uint32(b[0x168:])
	h.diskSize = le.Uint64(b[0x170:])
	h.blockSize = le.Uint32(b[0x178:])
	h.blockExtra = le.Uint32(b[0x17c:])
	h.blocksInImage = le.Uint32(b[0x180:])
	h.blocksAlloc = le.Uint32(b[0x184:])
	copy(h.uuidImage[:], b[0x188:])
	copy(h.uuidLastSnap[:], b[0x198:])
	copy(h.uuidLink[:], b[0x1a8:])
	copy(h.uuidParent[:], b[0x1b8:])
	return h
}

// Probe reports a VDI: its signature at offset 0x40.
func Probe(r io.ReaderAt, size int64) bool {
	if size < headerSize {
		return false
	}
	var b [4]byte
	if _, err := r.ReadAt(b[:], 0x40); err != nil {
		return false
	}
	return binary.LittleEndian.Uint32(b[:]) == signature
}

// Image is an open VDI.
type Image struct {
	f         format.File
	fileSize  int64
	h         header
	size      int64
	bmap      []uint32 // the entries the virtual size needs
	allocated int64    // bytes of the disk in allocated blocks
	holes     format.Holes

	closeOnce sync.Once
	closeErr  error
}

// Open reads the VDI in f. The image owns f: Close closes it. On error f is
// left open.
func Open(f format.File, _ format.Options) (*Image, error) {
	fileSize := f.Size()
	if fileSize < headerSize {
		return nil, fmt.Errorf("%w: vdi: %s is %d bytes, smaller than a VDI header", format.ErrWrongType, f.Name(), fileSize)
	}
	b := make([]byte, headerSize)
	if err := readFull(f, b, 0); err != nil {
		return nil, err
	}
	h := parseHeader(b)
	if !h.signatureFound {
		return nil, fmt.Errorf("%w: vdi: no signature 0x%08x at offset 0x40 of %s", format.ErrWrongType, uint32(signature), f.Name())
	}
	switch {
	case h.version != version11:
		return nil, format.Unsupportedf("vdi: header version %d.%d (only 1.1 is read, as qemu)", h.version>>16, h.version&0xffff)
	case h.diskSize > maxDiskSize:
		return nil, format.Unsupportedf("vdi: disk size %d exceeds the VDI maximum %d", h.diskSize, uint64(maxDiskSize))
	case h.offsetBmap%sectorSize != 0:
		return nil, format.Unsupportedf("vdi: block map offset %#x is not sector-aligned", h.offsetBmap)
	case h.offsetData%sectorSize != 0:
		return nil, format.Unsupportedf("vdi: data offset %#x is not sector-aligned", h.offsetData)
	case h.sectorSize != sectorSize:
		return nil, format.Unsupportedf("vdi: sector size %d (want 512)", h.sectorSize)
	case h.blockSize != blockSize:
		return nil, format.Unsupportedf("vdi: block size %d (qemu reads only 1 MiB blocks)", h.blockSize)
	case h.blockExtra != 0:
		return nil, format.Unsupportedf("vdi: %d bytes of extra data per block", h.blockExtra)
	case h.uuidLink != [16]byte{}:
		return nil, format.Unsupportedf("vdi: differencing image (non-null link UUID)")
	case h.uuidParent != [16]byte{}:
		return nil, format.Unsupportedf("vdi: differencing image (non-null parent UUID)")
	case h.blocksInImage > maxBlocks:
		return nil, format.Unsupportedf("vdi: %d blocks (max %d)", h.blocksInImage, maxBlocks)
	}
	// VBoxManage convertfromraw writes unaligned sizes: qemu rounds up.
	size := int64((h.diskSize + sectorSize - 1) &^ (sectorSize - 1))
	if uint64(size) > uint64(h.blocksInImage)*blockSize {
		return nil, format.Corruptf("vdi: disk size %d but the block map has room for %d blocks (%d bytes)", size, h.blocksInImage, uint64(h.blocksInImage)*blockSize)
	}
	img := &Image{f: f, fileSize: fileSize, h: h, size: size}
	img.holes = format.HolesOf(f)
	need := (size + blockSize - 1) / blockSize
	if need > maxMapEntries {
		return nil, format.Unsupportedf("vdi: %d blocks: block map larger than %d entries", need, maxMapEntries)
	}
	// Only the entries the disk size covers are read; the rest are never
	// used (qemu reads them but never looks at them either).
	if int64(h.offsetBmap) > fileSize || need*4 > fileSize-int64(h.offsetBmap) {
		return nil, format.Corruptf("vdi: block map of %d entries at offset %d is beyond the end of the file (%d bytes)", need, h.offsetBmap, fileSize)
	}
	img.bmap = make([]uint32, need)
	buf := make([]byte, min(64<<10, need*4))
	for i := int64(0); i < need; {
		n := min(need-i, int64(len(buf)/4))
		if err := readFull(f, buf[:n*4], int64(h.offsetBmap)+i*4); err != nil {
			return nil, err
		}
		for j := int64(0); j < n; j++ {
			e := binary.LittleEndian.Uint32(buf[j*4:])
			img.bmap[i+j] = e
			if e >= entryDiscarded {
				continue
			}
			// The part of the block inside the disk must be in the file:
			// qemu would read zeros past its end, we refuse a truncated
			// image.
			used := min(int64(blockSize), size-(i+j)*blockSize)
			if start := int64(h.offsetData) + int64(e)*blockSize; start+used > fileSize {
				return nil, format.Corruptf("vdi: block %d maps to offset %d..%d, beyond the end of the file (%d bytes)", i+j, start, start+used, fileSize)
			}
			img.allocated += used
		}
		i += n
	}
	return img, nil
}

func readFull(f format.File, b []byte, off int64) error {
	n, err := f.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return format.Corruptf("vdi: %d bytes at offset %d: file ends at %d", len(b), off, f.Size())
	}
	return fmt.Errorf("vdi: read %d bytes at %d: %w", len(b), off, err)
}

// Size is the virtual size in bytes.
func (img *Image) Size() int64 { return img.size }

// Type is "vdi".
func (img *Image) Type() format.Type { return Type }

// Readable is nil: every image Open accepts can be read.
func (img *Image) Readable() error { return nil }

// Close closes the file.
func (img *Image) Close() error {
	img.closeOnce.Do(func() { img.closeErr = img.f.Close() })
	return img.closeErr
}

func allocated(e uint32) bool { return e < entryDiscarded }

// ReadAt reads the virtual disk; runs of blocks stored one after the other
// in the file (always, in a static image) are read with one file read. It
// is safe for concurrent use.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("vdi: negative offset %d", off)
	}
	if off >= img.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	want := len(p)
	if rem := img.size - off; int64(want) > rem {
		want = int(rem)
	}
	b := p[:want]
	for pos := off; len(b) > 0; {
		bi := pos / blockSize
		n := min(int64(len(b)), (bi+1)*blockSize-pos)
		e := img.bmap[bi]
		if !allocated(e) {
			for n < int64(len(b)) && !allocated(img.bmap[(pos+n)/blockSize]) {
				n = min(int64(len(b)), n+blockSize)
			}
			clear(b[:n])
		} else {
			// Extend over the following blocks while they follow in the
			// file.
			for next := e + 1; n < int64(len(b)) && allocated(next) && img.bmap[(pos+n)/blockSize] == next; next++ {
				n = min(int64(len(b)), n+blockSize)
			}
			host := int64(img.h.offsetData) + int64(e)*blockSize + pos%blockSize
			if err := readFull(img.f, b[:n], host); err != nil {
				return 0, err
			}
		}
		b = b[n:]
		pos += n
	}
	if want < len(p) {
		return want, io.EOF
	}
	return want, nil
}

// Extent reports allocated blocks as data, except holes of the file inside
// them (a static image is a sparse file: qemu skips its holes too), and
// unallocated or discarded blocks as zeros, merging neighbours of the same
// status. It reads no data.
func (img *Image) Extent(start, length int64) (format.Extent, error) {
	if start < 0 || length <= 0 || start > img.size-length {
		return format.Extent{}, fmt.Errorf("vdi: extent %d+%d out of range (size %d)", start, length, img.size)
	}
	end := start + length
	var cur format.Extent
	for pos := start; pos < end; {
		e := img.extentAt(pos, end)
		if cur.Length == 0 {
			cur = e
		} else if cur.Allocated == e.Allocated && cur.Zero == e.Zero {
			cur.Length += e.Length
		} else {
			break
		}
		pos += e.Length
	}
	return cur, nil
}

// extentAt returns one piece starting at pos: a run of unallocated blocks,
// or a run of data or hole inside one allocated block.
func (img *Image) extentAt(pos, end int64) format.Extent {
	bi := pos / blockSize
	e := img.bmap[bi]
	blockEnd := (bi + 1) * blockSize
	if !allocated(e) {
		for blockEnd < end && !allocated(img.bmap[blockEnd/blockSize]) {
			blockEnd += blockSize
		}
		return format.Extent{Start: pos, Length: min(end, blockEnd) - pos, Zero: true}
	}
	host := int64(img.h.offsetData) + int64(e)*blockSize + pos%blockSize
	hole, n := img.holes.Probe(host, min(end, blockEnd)-pos)
	return format.Extent{Start: pos, Length: n, Allocated: true, Zero: hole}
}

// Info describes the image like `qemu-img info`.
func (img *Image) Info() format.Info {
	sub := "dynamic"
	if img.h.imageType == typeStatic {
		sub = "static"
	}
	d := map[string]any{
		"version":          fmt.Sprintf("%d.%d", img.h.version>>16, img.h.version&0xffff),
		"image_type":       img.h.imageType,
		"header_size":      img.h.headerSize,
		"image_flags":      img.h.imageFlags,
		"uuid":             formatUUID(img.h.uuidImage),
		"uuid_last_snap":   formatUUID(img.h.uuidLastSnap),
		"blocks_in_image":  img.h.blocksInImage,
		"blocks_allocated": img.h.blocksAlloc,
		"geometry":         fmt.Sprintf("%d/%d/%d", img.h.cylinders, img.h.heads, img.h.sectors),
		"header_text":      img.h.text,
	}
	if img.h.description != "" {
		d["description"] = img.h.description
	}
	return format.Info{
		Format:         Type,
		Subformat:      sub,
		VirtualSize:    img.size,
		FileSize:       img.fileSize,
		AllocatedBytes: img.allocated,
		ClusterSize:    blockSize,
		Details:        d,
	}
}

// formatUUID prints a UUID stored as VirtualBox does, in Microsoft GUID
// byte order (the first three fields little-endian).
func formatUUID(u [16]byte) string {
	le := binary.LittleEndian
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", le.Uint32(u[0:]), le.Uint16(u[4:]), le.Uint16(u[6:]), u[8:10], u[10:16])
}
