// Package vhdx reads Hyper-V VHDX images (MS-VHDX v1.0), producing the
// same bytes as `qemu-img convert -O raw` (qemu 7.2 is the reference).
//
// Layout: a 1 MiB header section (file identifier, two headers, two region
// table copies), then regions anywhere in the file at 1 MiB-aligned offsets:
// the log, the BAT (block allocation table) and the metadata region. The
// BAT maps each payload block of the virtual disk to a file offset in MiB
// units; after every chunk-ratio payload entries it holds one sector bitmap
// entry, used only by differencing images.
//
// The reader is read-only: an image with a log that still has to be
// replayed is refused (qemu-img convert refuses it too, since it opens the
// source read-only), and differencing images are refused (qemu 7.2 does not
// read them either).
//
// Where qemu 7.2 and the spec part, on purpose: images with 4 KiB logical
// sectors are read per the spec (qemu refuses them); a damaged first region
// table falls back to the second copy (qemu refuses); a BAT region past the
// end of the file or a FULLY_PRESENT block at offset 0 is refused as
// corrupt (qemu reads zeros, or the file's own header, as disk data).
package vhdx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"sort"
	"strings"
	"unicode/utf16"

	"github.com/hikube/ferry/converter/format"
)

// Type is qemu-img's name for the format.
const Type format.Type = "vhdx"

const (
	kiB = 1 << 10
	miB = 1 << 20
	tiB = 1 << 40

	headerSectionSize = 1 * miB
	header1Offset     = 64 * kiB
	header2Offset     = 128 * kiB
	region1Offset     = 192 * kiB
	region2Offset     = 256 * kiB
	headerCRCSize     = 4 * kiB  // the header checksum covers 4 KiB
	regionTableSize   = 64 * kiB // and the region table checksum 64 KiB
	maxRegionEntries  = 2047
	metadataTableSize = 64 * kiB
	maxMetadataItems  = 2047
	maxMetadataItem   = 1 * miB

	minBlockSize = 1 * miB
	maxBlockSize = 256 * miB
	// MaxVirtualSize is the VHDX format limit (64 TiB).
	MaxVirtualSize = 64 * tiB
	// sectorsPerChunk is 2^23: one sector bitmap block (1 MiB) has a bit
	// per logical sector of chunkRatio payload blocks.
	sectorsPerChunk = 1 << 23
)

// Payload block states (BAT entry bits 0-2).
const (
	stateNotPresent       = 0
	stateUndefined        = 1
	stateZero             = 2
	stateUnmapped         = 3
	stateUnmappedV095     = 5 // UNMAPPED in the v0.95 draft; qemu reads it as zeros
	stateFullyPresent     = 6
	statePartiallyPresent = 7
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// guid is an MS GUID as stored on disk: Data1-3 little-endian, Data4 as is.
type guid [16]byte

func mkGUID(d1 uint32, d2, d3 uint16, d4 ...byte) guid {
	var g guid
	binary.LittleEndian.PutUint32(g[0:], d1)
	binary.LittleEndian.PutUint16(g[4:], d2)
	binary.LittleEndian.PutUint16(g[6:], d3)
	copy(g[8:], d4)
	return g
}

func (g guid) String() string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(g[0:]),
		binary.LittleEndian.Uint16(g[4:]), binary.LittleEndian.Uint16(g[6:]), g[8:10], g[10:])
}

func (g guid) isZero() bool { return g == guid{} }

var (
	batGUID      = mkGUID(0x2dc27766, 0xf623, 0x4200, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08)
	metadataGUID = mkGUID(0x8b7ca206, 0x4790, 0x4b9a, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e)

	fileParamsGUID    = mkGUID(0xcaa16737, 0xfa36, 0x4d43, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b)
	virtualSizeGUID   = mkGUID(0x2fa54224, 0xcd1b, 0x4876, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8)
	page83GUID        = mkGUID(0xbeca12ab, 0xb2e6, 0x4523, 0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46)
	logicalSectGUID   = mkGUID(0x8141bf1d, 0xa96f, 0x4709, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f)
	physicalSectGUID  = mkGUID(0xcda348c7, 0x445d, 0x4471, 0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56)
	parentLocatorGUID = mkGUID(0xa8d35f2d, 0xb30b, 0x454d, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c)
)

// Probe reports whether r starts with the VHDX file identifier.
func Probe(r io.ReaderAt, size int64) bool {
	if size < 8 {
		return false
	}
	var sig [8]byte
	if _, err := r.ReadAt(sig[:], 0); err != nil && err != io.EOF {
		return false
	}
	return string(sig[:]) == "vhdxfile"
}

// header is the active VHDX header.
type header struct {
	seq           uint64
	fileWriteGUID guid
	dataWriteGUID guid
	logGUID       guid
	logVersion    uint16
	version       uint16
	logLength     uint32
	logOffset     uint64
	raw           [80]byte // the defined fields, to compare two headers
}

type region struct {
	id       guid
	offset   uint64
	length   uint32
	required bool
}

// span is a byte range [start, end) of the file that holds structure.
type span struct{ start, end uint64 }

// Image is an open VHDX image. It is immutable after Open, so ReadAt and
// Extent are safe for concurrent use.
type Image struct {
	f        format.File
	fileSize int64

	size       int64 // virtual disk size
	rawSize    int64 // virtual disk size as written, before rounding down to a sector
	blockSize  int64
	blockBits  uint
	chunkRatio int64
	logical    uint32
	physical   uint32
	fixed      bool // leave_blocks_allocated
	page83     guid

	hdr     header
	creator string

	// bat holds one entry per payload block: the block's file offset in
	// MiB, or 0 when the block reads as zeros. A FULLY_PRESENT block can
	// never be at offset 0 (the header section is there), so 0 is free to
	// mean "no data". 32 bits cover files up to 4 PiB.
	bat []uint32
	// states counts payload blocks by BAT state, for Info.
	states    [8]int64
	allocated int64
}

// Open parses the VHDX structures of f and loads its BAT. The image owns f:
// Close closes it. On error f is left open for the caller.
func Open(f format.File, opts format.Options) (*Image, error) {
	img := &Image{f: f, fileSize: f.Size()}
	if img.fileSize < 0 {
		return nil, fmt.Errorf("vhdx: size of %s unknown", f.Name())
	}
	if err := img.open(); err != nil {
		return nil, err
	}
	return img, nil
}

func (img *Image) readAt(p []byte, off int64, what string) error {
	if off < 0 || off > img.fileSize || int64(len(p)) > img.fileSize-off {
		return format.Corruptf("vhdx: %s (%d bytes at offset %d) is beyond the end of the file (%d bytes): truncated image?",
			what, len(p), off, img.fileSize)
	}
	n, err := img.f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		return format.Corruptf("vhdx: %s at offset %d: file ended early", what, off+int64(n))
	}
	return fmt.Errorf("vhdx: read %s at offset %d: %w", what, off, err)
}

func (img *Image) open() error {
	var sig [8]byte
	if img.fileSize >= 8 {
		if err := img.readAt(sig[:], 0, "signature"); err != nil {
			return err
		}
	}
	if string(sig[:]) != "vhdxfile" {
		return fmt.Errorf("%w: no \"vhdxfile\" signature at offset 0", format.ErrWrongType)
	}
	// The header section must be there in full up to the second region
	// table; regions start at 1 MiB at the earliest.
	if img.fileSize < region2Offset+regionTableSize {
		return format.Corruptf("vhdx: file is %d bytes, shorter than the %d-byte header section: truncated image?",
			img.fileSize, headerSectionSize)
	}
	var id [520]byte
	if err := img.readAt(id[:], 0, "file identifier"); err != nil {
		return err
	}
	img.creator = utf16String(id[8:])

	if err := img.parseHeaders(); err != nil {
		return err
	}
	logSpan, err := img.checkLog()
	if err != nil {
		return err
	}
	bat, meta, spans, err := img.parseRegionTable(logSpan)
	if err != nil {
		return err
	}
	if err := img.parseMetadata(meta); err != nil {
		return err
	}
	return img.loadBAT(bat, spans)
}

// parseHeaders picks the valid header with the highest sequence number, as
// the spec and qemu do.
func (img *Image) parseHeaders() error {
	var hs [2]header
	var valid [2]bool
	var why [2]string
	buf := make([]byte, headerCRCSize)
	for i, off := range []int64{header1Offset, header2Offset} {
		if err := img.readAt(buf, off, fmt.Sprintf("header %d", i+1)); err != nil {
			return err
		}
		h, err := parseHeader(buf)
		if err != nil {
			why[i] = err.Error()
			continue
		}
		hs[i], valid[i] = h, true
	}
	var cur int
	switch {
	case valid[0] && valid[1]:
		switch {
		case hs[0].seq > hs[1].seq:
			cur = 0
		case hs[1].seq > hs[0].seq:
			cur = 1
		case hs[0].raw == hs[1].raw:
			// Disk2VHD writes two identical headers; qemu accepts that.
			cur = 0
		default:
			return format.Corruptf("vhdx: both headers have sequence number %d but differ", hs[0].seq)
		}
	case valid[0]:
		cur = 0
	case valid[1]:
		cur = 1
	default:
		return format.Corruptf("vhdx: no valid header: header 1 at offset %d: %s; header 2 at offset %d: %s",
			header1Offset, why[0], header2Offset, why[1])
	}
	img.hdr = hs[cur]
	return nil
}

func parseHeader(b []byte) (header, error) {
	var h header
	if string(b[0:4]) != "head" {
		return h, errors.New(`no "head" signature`)
	}
	if want, got := binary.LittleEndian.Uint32(b[4:]), checksum(b, 4); want != got {
		return h, fmt.Errorf("CRC-32C mismatch (stored %#08x, computed %#08x)", want, got)
	}
	h.seq = binary.LittleEndian.Uint64(b[8:])
	copy(h.fileWriteGUID[:], b[16:32])
	copy(h.dataWriteGUID[:], b[32:48])
	copy(h.logGUID[:], b[48:64])
	h.logVersion = binary.LittleEndian.Uint16(b[64:])
	h.version = binary.LittleEndian.Uint16(b[66:])
	h.logLength = binary.LittleEndian.Uint32(b[68:])
	h.logOffset = binary.LittleEndian.Uint64(b[72:])
	copy(h.raw[:], b[:80])
	if h.version != 1 {
		return h, fmt.Errorf("version %d, only version 1 exists", h.version)
	}
	return h, nil
}

// checksum is the CRC-32C of b with the 4-byte checksum field at crcOff
// taken as zero.
func checksum(b []byte, crcOff int) uint32 {
	var zero [4]byte
	c := crc32.Update(0, castagnoli, b[:crcOff])
	c = crc32.Update(c, castagnoli, zero[:])
	return crc32.Update(c, castagnoli, b[crcOff+4:])
}

// parseRegionTable reads the region table (the second copy if the first
// is damaged) and returns the BAT and metadata regions and every span of
// the file holding structure, for overlap checks.
func (img *Image) parseRegionTable(logSpan span) (bat, meta region, spans []span, err error) {
	buf := make([]byte, regionTableSize)
	var entries []region
	var errs []string
	for i, off := range []int64{region1Offset, region2Offset} {
		if err := img.readAt(buf, off, fmt.Sprintf("region table %d", i+1)); err != nil {
			return bat, meta, nil, err
		}
		entries, err = parseRegions(buf)
		if err == nil {
			break
		}
		errs = append(errs, fmt.Sprintf("copy %d at offset %d: %v", i+1, off, err))
	}
	if len(errs) == 2 {
		return bat, meta, nil, format.Corruptf("vhdx: no valid region table: %s", strings.Join(errs, "; "))
	}

	spans = []span{{0, headerSectionSize}}
	if logSpan.end > logSpan.start {
		spans = append(spans, logSpan)
	}
	var haveBAT, haveMeta bool
	for _, r := range entries {
		name := "region " + r.id.String()
		switch r.id {
		case batGUID:
			name = "BAT region"
		case metadataGUID:
			name = "metadata region"
		}
		if r.offset%miB != 0 || r.offset < headerSectionSize || r.offset > uint64(format.MaxVirtualSize) {
			return bat, meta, nil, format.Corruptf("vhdx: %s offset %d is not a 1 MiB multiple past the header section", name, r.offset)
		}
		if r.length == 0 || r.length%miB != 0 {
			return bat, meta, nil, format.Corruptf("vhdx: %s length %d is not a non-zero multiple of 1 MiB", name, r.length)
		}
		spans = append(spans, span{r.offset, r.offset + uint64(r.length)})
		switch r.id {
		case batGUID:
			if haveBAT {
				return bat, meta, nil, format.Corruptf("vhdx: two BAT regions in the region table")
			}
			bat, haveBAT = r, true
		case metadataGUID:
			if haveMeta {
				return bat, meta, nil, format.Corruptf("vhdx: two metadata regions in the region table")
			}
			meta, haveMeta = r, true
		default:
			if r.required {
				return bat, meta, nil, format.Unsupportedf("vhdx: required region %s (offset %d, %d bytes) is unknown: the spec forbids opening the file without understanding it", r.id, r.offset, r.length)
			}
		}
	}
	if !haveBAT || !haveMeta {
		return bat, meta, nil, format.Corruptf("vhdx: region table lacks the BAT or the metadata region")
	}
	for _, r := range []region{bat, meta} {
		if end := r.offset + uint64(r.length); end > uint64(img.fileSize) {
			what := "BAT"
			if r.id == metadataGUID {
				what = "metadata"
			}
			return bat, meta, nil, format.Corruptf("vhdx: %s region [%d, %d) is beyond the end of the file (%d bytes): truncated image?",
				what, r.offset, end, img.fileSize)
		}
	}
	// Overlapping structures are corrupt (qemu checks the same).
	sort.Slice(spans, func(i, j int) bool { return spans[i].start < spans[j].start })
	for i := 1; i < len(spans); i++ {
		if spans[i].start < spans[i-1].end {
			return bat, meta, nil, format.Corruptf("vhdx: structures overlap: [%d, %d) and [%d, %d) (regions and log)",
				spans[i-1].start, spans[i-1].end, spans[i].start, spans[i].end)
		}
	}
	return bat, meta, spans, nil
}

func parseRegions(b []byte) ([]region, error) {
	if string(b[0:4]) != "regi" {
		return nil, errors.New(`no "regi" signature`)
	}
	if want, got := binary.LittleEndian.Uint32(b[4:]), checksum(b, 4); want != got {
		return nil, fmt.Errorf("CRC-32C mismatch (stored %#08x, computed %#08x)", want, got)
	}
	n := binary.LittleEndian.Uint32(b[8:])
	if n > maxRegionEntries {
		return nil, fmt.Errorf("%d entries, at most %d allowed", n, maxRegionEntries)
	}
	rs := make([]region, n)
	for i := range rs {
		e := b[16+32*i:]
		copy(rs[i].id[:], e[:16])
		rs[i].offset = binary.LittleEndian.Uint64(e[16:])
		rs[i].length = binary.LittleEndian.Uint32(e[24:])
		rs[i].required = binary.LittleEndian.Uint32(e[28:])&1 != 0
	}
	return rs, nil
}

type metaItem struct {
	offset, length uint32
	required       bool
	present        bool
}

// parseMetadata reads the metadata table and the items the reader needs.
func (img *Image) parseMetadata(meta region) error {
	tbl := make([]byte, metadataTableSize)
	if err := img.readAt(tbl, int64(meta.offset), "metadata table"); err != nil {
		return err
	}
	if string(tbl[:8]) != "metadata" {
		return format.Corruptf("vhdx: no \"metadata\" signature at offset %d", meta.offset)
	}
	n := int(binary.LittleEndian.Uint16(tbl[10:]))
	if n > maxMetadataItems {
		return format.Corruptf("vhdx: metadata table has %d entries, at most %d allowed", n, maxMetadataItems)
	}
	known := map[guid]*metaItem{
		fileParamsGUID: {}, virtualSizeGUID: {}, page83GUID: {},
		logicalSectGUID: {}, physicalSectGUID: {}, parentLocatorGUID: {},
	}
	names := map[guid]string{
		fileParamsGUID: "file parameters", virtualSizeGUID: "virtual disk size", page83GUID: "page 83 data",
		logicalSectGUID: "logical sector size", physicalSectGUID: "physical sector size", parentLocatorGUID: "parent locator",
	}
	for i := 0; i < n; i++ {
		e := tbl[32+32*i:]
		var id guid
		copy(id[:], e[:16])
		it := metaItem{
			offset:   binary.LittleEndian.Uint32(e[16:]),
			length:   binary.LittleEndian.Uint32(e[20:]),
			required: binary.LittleEndian.Uint32(e[24:])&4 != 0,
			present:  true,
		}
		k, ok := known[id]
		if !ok {
			if it.required {
				return format.Unsupportedf("vhdx: required metadata item %s is unknown: the spec forbids opening the file without understanding it", id)
			}
			continue
		}
		if k.present {
			return format.Corruptf("vhdx: metadata item %s appears twice", names[id])
		}
		*k = it
	}
	// read fetches a known item, checking it lies inside the region.
	read := func(id guid, size int) ([]byte, error) {
		it := known[id]
		if !it.present {
			return nil, format.Corruptf("vhdx: required metadata item %s is missing", names[id])
		}
		if it.length < uint32(size) || it.length > maxMetadataItem || it.offset < metadataTableSize ||
			uint64(it.offset)+uint64(it.length) > uint64(meta.length) {
			return nil, format.Corruptf("vhdx: metadata item %s (offset %d, %d bytes) is not inside the %d-byte metadata region past its table, or is not %d bytes",
				names[id], it.offset, it.length, meta.length, size)
		}
		b := make([]byte, size)
		return b, img.readAt(b, int64(meta.offset)+int64(it.offset), "metadata item "+names[id])
	}

	b, err := read(fileParamsGUID, 8)
	if err != nil {
		return err
	}
	bs := binary.LittleEndian.Uint32(b)
	flags := binary.LittleEndian.Uint32(b[4:])
	img.fixed = flags&1 != 0
	if flags&2 != 0 {
		parent := ""
		if it := known[parentLocatorGUID]; it.present && it.length <= maxMetadataItem {
			if b, err := read(parentLocatorGUID, int(it.length)); err == nil {
				kv := parseParentLocator(b)
				for _, k := range []string{"relative_path", "absolute_win32_path", "volume_path"} {
					if kv[k] != "" {
						parent = fmt.Sprintf(" (parent %s %q)", k, kv[k])
						break
					}
				}
			}
		}
		return format.Unsupportedf("vhdx: differencing image (has_parent)%s: parent chains are not supported (qemu-img 7.2 does not read them either); merge it into its parent first (Hyper-V Edit Disk or Merge-VHD)", parent)
	}
	if known[parentLocatorGUID].present {
		// qemu refuses this combination too.
		return format.Unsupportedf("vhdx: parent locator present in an image without has_parent")
	}
	if bs < minBlockSize || bs > maxBlockSize || bs&(bs-1) != 0 {
		return format.Corruptf("vhdx: block size %d is not a power of two in [1 MiB, 256 MiB]", bs)
	}
	img.blockSize = int64(bs)
	img.blockBits = uint(bits.TrailingZeros32(bs))

	if b, err = read(logicalSectGUID, 4); err != nil {
		return err
	}
	img.logical = binary.LittleEndian.Uint32(b)
	if img.logical != 512 && img.logical != 4096 {
		return format.Corruptf("vhdx: logical sector size %d, must be 512 or 4096", img.logical)
	}
	if b, err = read(physicalSectGUID, 4); err != nil {
		return err
	}
	// Informational only: reads do not depend on it.
	img.physical = binary.LittleEndian.Uint32(b)
	if b, err = read(page83GUID, 16); err != nil {
		return err
	}
	copy(img.page83[:], b)

	if b, err = read(virtualSizeGUID, 8); err != nil {
		return err
	}
	vs := binary.LittleEndian.Uint64(b)
	if vs > MaxVirtualSize || vs > uint64(format.MaxVirtualSize) {
		return format.Corruptf("vhdx: virtual disk size %d exceeds the VHDX limit of 64 TiB", vs)
	}
	// The spec wants a multiple of the logical sector; qemu drops a partial
	// last sector (it counts whole sectors), and so do we. The BAT still
	// covers the size as written.
	img.rawSize = int64(vs)
	img.size = int64(vs - vs%uint64(img.logical))
	img.chunkRatio = sectorsPerChunk * int64(img.logical) / img.blockSize
	return nil
}

// loadBAT reads the payload entries of the BAT and validates them: every
// FULLY_PRESENT block must lie inside the file and clear of the header
// section, the log and the regions.
func (img *Image) loadBAT(r region, spans []span) error {
	nBlocks := (img.rawSize + img.blockSize - 1) >> img.blockBits
	// Non-differencing images have a sector bitmap entry after every
	// chunkRatio payload entries, except after the last payload entry.
	var nEntries int64
	if nBlocks > 0 {
		nEntries = nBlocks + (nBlocks-1)/img.chunkRatio
	}
	if nEntries*8 > int64(r.length) {
		return format.Corruptf("vhdx: BAT region (%d bytes) is too small for the %d entries that %d blocks of %d bytes need",
			r.length, nEntries, nBlocks, img.blockSize)
	}
	img.bat = make([]uint32, nBlocks)
	const chunk = 1 * miB
	buf := make([]byte, min(chunk, nEntries*8))
	var blk int64
	for first := int64(0); first < nEntries; {
		n := min(int64(len(buf))/8, nEntries-first)
		if err := img.readAt(buf[:n*8], int64(r.offset)+first*8, "BAT"); err != nil {
			return err
		}
		for i := int64(0); i < n; i++ {
			idx := first + i
			if (idx+1)%(img.chunkRatio+1) == 0 {
				continue // sector bitmap entry: only differencing images use it
			}
			if err := img.setEntry(blk, binary.LittleEndian.Uint64(buf[i*8:]), spans); err != nil {
				return err
			}
			blk++
		}
		first += n
	}
	return nil
}

func (img *Image) setEntry(blk int64, e uint64, spans []span) error {
	state := e & 7
	img.states[state]++
	switch state {
	case stateNotPresent, stateUndefined, stateZero, stateUnmapped, stateUnmappedV095:
		return nil
	case stateFullyPresent:
	case statePartiallyPresent:
		return format.Corruptf("vhdx: block %d is PARTIALLY_PRESENT, which only differencing images may use", blk)
	default:
		return format.Corruptf("vhdx: block %d has invalid BAT state %d", blk, state)
	}
	off := e &^ (miB - 1)
	valid := max(0, min(img.blockSize, img.size-blk*img.blockSize))
	if off < headerSectionSize || off >= uint64(img.fileSize) || uint64(valid) > uint64(img.fileSize)-off {
		return format.Corruptf("vhdx: block %d at file offset %d (+%d bytes) is outside the file (%d bytes) or in its header section: truncated image?",
			blk, off, valid, img.fileSize)
	}
	// qemu refuses payload blocks that overlap a region or the log.
	end := off + uint64(img.blockSize)
	i := sort.Search(len(spans), func(i int) bool { return spans[i].end > off })
	if i < len(spans) && spans[i].start < end {
		return format.Corruptf("vhdx: block %d at file offset %d overlaps structure at [%d, %d)", blk, off, spans[i].start, spans[i].end)
	}
	if off>>20 > 1<<32-1 {
		return format.Unsupportedf("vhdx: block %d at file offset %d: files over 4 PiB are not supported", blk, off)
	}
	img.bat[blk] = uint32(off >> 20)
	img.allocated += valid
	return nil
}

// parseParentLocator returns the key/value pairs of a parent locator
// item, skipping malformed entries; it only serves error messages.
func parseParentLocator(b []byte) map[string]string {
	kv := map[string]string{}
	if len(b) < 20 {
		return kv
	}
	n := int(binary.LittleEndian.Uint16(b[18:]))
	for i := 0; i < n && 20+12*(i+1) <= len(b); i++ {
		e := b[20+12*i:]
		ko, vo := int64(binary.LittleEndian.Uint32(e)), int64(binary.LittleEndian.Uint32(e[4:]))
		kl, vl := int64(binary.LittleEndian.Uint16(e[8:])), int64(binary.LittleEndian.Uint16(e[10:]))
		if ko+kl > int64(len(b)) || vo+vl > int64(len(b)) {
			continue
		}
		kv[utf16String(b[ko:ko+kl])] = utf16String(b[vo : vo+vl])
	}
	return kv
}

func utf16String(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return strings.TrimSpace(string(utf16.Decode(u)))
}
