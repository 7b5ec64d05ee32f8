// Package qcow2 reads QEMU qcow2 images (versions 2 and 3) for conversion
// to raw, matching `qemu-img convert -O raw` byte for byte.
//
// It supports every cluster size qemu does (512 B - 2 MiB), extended L2
// entries (subclusters), zlib and zstd compressed clusters, zero clusters,
// preallocated images and backing chains. Backing files are opened only
// through the confined resolver and opener given in format.Options.
//
// Everything read from the file is untrusted: table offsets and sizes are
// checked against the file size and qemu's own limits before use, and
// nothing is allocated in proportion to a declared size before that check.
package qcow2

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
const Type format.Type = "qcow2"

const (
	magic = "QFI\xfb"

	minClusterBits = 9
	maxClusterBits = 21

	l1OffsetMask   = 0x00fffffffffffe00
	l2OffsetMask   = 0x00fffffffffffe00
	flagCompressed = 1 << 62
	flagZero       = 1 // v3 "reads as zeros" (ignored with extended L2)

	// qemu's limits (QCOW_MAX_L1_SIZE, QCOW_MAX_REFTABLE_SIZE,
	// QCOW_MAX_SNAPSHOTS): images beyond them do not open in qemu either.
	maxL1Bytes       = 32 << 20
	maxRefTableBytes = 8 << 20
	maxSnapshots     = 65536
	maxBackingName   = 1023
	maxBackingFormat = 15 // qemu keeps it in a 16-byte C string

	incDirty       = 1 << 0
	incCorrupt     = 1 << 1
	incDataFile    = 1 << 2
	incCompression = 1 << 3
	incExtL2       = 1 << 4
	incKnown       = incDirty | incCorrupt | incDataFile | incCompression | incExtL2

	compatLazyRefcounts = 1 << 0

	autoclearBitmaps = 1 << 0

	extEnd           = 0x00000000
	extBackingFormat = 0xe2792aca
	extFeatureTable  = 0x6803f857
	extBitmaps       = 0x23852875
	extEncryption    = 0x0537be77
	extDataFile      = 0x44415441

	compressionZlib = 0
	compressionZstd = 1

	// l2CacheBytes bounds the L2 table cache: 32 MiB maps 256 GiB of a
	// 64 KiB-cluster image, so sequential conversion reads each table once.
	l2CacheBytes        = 32 << 20
	l2CacheBytesBacking = 8 << 20
)

// Image is an open qcow2 image. ReadAt and Extent are safe for concurrent
// use.
type Image struct {
	f        format.File
	fileSize int64

	size        int64  // virtual size as qemu reads it: rounded down to 512 bytes
	headerSize  uint64 // virtual size as written in the header
	version     uint32
	clusterBits uint
	clusterSize int64
	clusterMask int64
	extL2       bool
	l2Bits      uint // log2 of the entries of an L2 table
	l1Shift     uint // log2 of the bytes one L1 entry maps
	l1          []uint64
	l1Size      uint32 // as declared (may exceed len(l1): vmstate entries)
	l1Offset    uint64

	zstd bool
	// Compressed cluster descriptor layout (depends on cluster_bits).
	csizeShift uint
	csizeMask  uint64
	coffMask   uint64

	incompat, compat, autoclear uint64
	refcountOrder               uint32
	nbSnapshots                 uint32
	features                    []string // names from the feature name table

	backingName   string
	backingFormat string
	backing       format.Image
	backingSize   int64

	cache   *l2Cache
	scratch sync.Pool // cluster-sized buffers for partial compressed clusters

	// Last unallocated run found by Extent: with a backing file each call
	// may return a piece shorter than the run, and rescanning the run every
	// time would be quadratic.
	runMu            sync.Mutex
	runStart, runEnd int64
	closeOnce        sync.Once
	closeErr         error
}

var (
	_ format.Image     = (*Image)(nil)
	_ format.Inspector = (*Image)(nil)
)

// Probe reports whether the data starts with a qcow2 header of a version
// this package reads.
func Probe(r io.ReaderAt, size int64) bool {
	if size < 8 {
		return false
	}
	var b [8]byte
	if n, _ := r.ReadAt(b[:], 0); n < len(b) {
		return false
	}
	v := binary.BigEndian.Uint32(b[4:])
	return string(b[:4]) == magic && (v == 2 || v == 3)
}

// Open reads the header, checks it and the L1 table against the file, and
// opens the backing chain. On error f is left open (the caller owns it);
// anything Open opened itself is closed.
func Open(f format.File, opts format.Options) (*Image, error) {
	img, err := parse(f)
	if err != nil {
		return nil, fmt.Errorf("qcow2 %s: %w", f.Name(), err)
	}
	// Backing images get a smaller cache so a long chain stays bounded.
	budget := int64(l2CacheBytes)
	if opts.Depth > 0 {
		budget = l2CacheBytesBacking
	}
	img.cache = newL2Cache(budget)
	if err := img.openBacking(opts); err != nil {
		return nil, fmt.Errorf("qcow2 %s: %w", f.Name(), err)
	}
	return img, nil
}

func be32(b []byte, off int) uint32 { return binary.BigEndian.Uint32(b[off:]) }
func be64(b []byte, off int) uint64 { return binary.BigEndian.Uint64(b[off:]) }

// readFull reads len(b) bytes at off; a short read is an error.
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

func parse(f format.File) (*Image, error) {
	fsize := f.Size()
	var h [112]byte
	hn := int(min(fsize, int64(len(h))))
	if hn < 8 {
		return nil, fmt.Errorf("%w: %d-byte file has no qcow2 header", format.ErrWrongType, fsize)
	}
	if err := readFull(f, h[:hn], 0); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	if string(h[:4]) != magic {
		return nil, fmt.Errorf("%w: no qcow2 magic", format.ErrWrongType)
	}
	img := &Image{f: f, fileSize: fsize, version: be32(h[:], 4)}
	if img.version != 2 && img.version != 3 {
		return nil, format.Unsupportedf("qcow2 version %d (only 2 and 3 exist)", img.version)
	}
	hdrLen := 72
	if img.version == 3 {
		if hn < 104 {
			return nil, format.Corruptf("file is %d bytes, shorter than the 104-byte v3 header", fsize)
		}
		hdrLen = int(be32(h[:], 100))
		if hdrLen < 104 {
			return nil, format.Corruptf("v3 header_length %d < 104", hdrLen)
		}
		img.incompat = be64(h[:], 72)
		img.compat = be64(h[:], 80)
		img.autoclear = be64(h[:], 88)
		img.refcountOrder = be32(h[:], 96)
	} else {
		if hn < 72 {
			return nil, format.Corruptf("file is %d bytes, shorter than the 72-byte v2 header", fsize)
		}
		img.refcountOrder = 4
	}

	cb := be32(h[:], 20)
	if cb < minClusterBits || cb > maxClusterBits {
		return nil, format.Corruptf("cluster_bits %d outside %d..%d", cb, minClusterBits, maxClusterBits)
	}
	img.clusterBits = uint(cb)
	img.clusterSize = 1 << cb
	img.clusterMask = img.clusterSize - 1
	if int64(hdrLen) > img.clusterSize {
		return nil, format.Corruptf("header_length %d exceeds the %d-byte cluster", hdrLen, img.clusterSize)
	}
	if cm := be32(h[:], 32); cm != 0 {
		name := map[uint32]string{1: "AES", 2: "LUKS"}[cm]
		if name == "" {
			name = fmt.Sprintf("method %d", cm)
		}
		return nil, format.Unsupportedf("encrypted image (%s)", name)
	}
	if img.refcountOrder > 6 {
		return nil, format.Corruptf("refcount_order %d > 6", img.refcountOrder)
	}

	img.headerSize = be64(h[:], 24)
	if img.headerSize > uint64(format.MaxVirtualSize) {
		return nil, format.Corruptf("virtual size %d exceeds the %d-byte limit", img.headerSize, format.MaxVirtualSize)
	}
	// qemu counts the disk in whole sectors (total_sectors = size / 512).
	img.size = int64(img.headerSize) &^ 511

	// Incompatible features: refuse what changes how data is found.
	if unk := img.incompat &^ incKnown; unk != 0 {
		return nil, format.Unsupportedf("unknown incompatible feature bits %#x", unk)
	}
	if img.incompat&incDataFile != 0 {
		return nil, format.Unsupportedf("external data file (incompatible feature bit 2)")
	}
	img.extL2 = img.incompat&incExtL2 != 0
	if img.extL2 && cb < 14 {
		return nil, format.Corruptf("extended L2 entries need clusters of at least 16 KiB, cluster_bits is %d", cb)
	}
	ct := byte(compressionZlib)
	if hdrLen > 104 {
		if hn <= 104 {
			return nil, format.Corruptf("file is %d bytes, shorter than its %d-byte header", fsize, hdrLen)
		}
		ct = h[104]
	}
	switch ct {
	case compressionZlib:
		if img.incompat&incCompression != 0 {
			return nil, format.Corruptf("compression type bit set with zlib compression")
		}
	case compressionZstd:
		if img.incompat&incCompression == 0 {
			return nil, format.Corruptf("zstd compression without the compression type bit")
		}
		img.zstd = true
	default:
		return nil, format.Unsupportedf("compression type %d", ct)
	}
	img.csizeShift = 62 - (img.clusterBits - 8)
	img.csizeMask = 1<<(img.clusterBits-8) - 1
	img.coffMask = 1<<img.csizeShift - 1

	// The header cluster: extensions and backing file name live in it.
	hc := min(img.clusterSize, fsize)
	buf := make([]byte, hc)
	if err := readFull(f, buf, 0); err != nil {
		return nil, fmt.Errorf("read header cluster: %w", err)
	}
	bfo := be64(h[:], 8)
	bfs := be32(h[:], 16)
	if bfo > uint64(img.clusterSize) {
		return nil, format.Corruptf("backing file name offset %#x outside the header cluster", bfo)
	}
	extEndOff := img.clusterSize
	if bfo != 0 {
		extEndOff = int64(bfo)
	}
	if err := img.parseExtensions(buf, int64(hdrLen), min(extEndOff, hc)); err != nil {
		return nil, err
	}
	if bfo != 0 && bfs != 0 {
		if bfs > maxBackingName {
			return nil, format.Corruptf("backing file name length %d > %d", bfs, maxBackingName)
		}
		end := bfo + uint64(bfs)
		if end > uint64(img.clusterSize) {
			return nil, format.Corruptf("backing file name (offset %#x, %d bytes) crosses the header cluster", bfo, bfs)
		}
		if end > uint64(hc) {
			return nil, format.Corruptf("backing file name (offset %#x, %d bytes) beyond the end of the %d-byte file", bfo, bfs, fsize)
		}
		name := buf[bfo:end]
		// qemu keeps it as a C string.
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		img.backingName = string(name)
	}

	if err := img.checkTables(h[:]); err != nil {
		return nil, err
	}
	if err := img.readL1(); err != nil {
		return nil, err
	}
	cs := img.clusterSize
	img.scratch.New = func() any { b := make([]byte, cs); return &b }
	return img, nil
}

// parseExtensions walks the header extensions in buf[off:end).
func (img *Image) parseExtensions(buf []byte, off, end int64) error {
	for off+8 <= end {
		typ := be32(buf, int(off))
		l := int64(be32(buf, int(off)+4))
		off += 8
		if typ == extEnd {
			return nil
		}
		if l > end-off {
			return format.Corruptf("header extension %#x at offset %d: %d bytes overrun the header area", typ, off-8, l)
		}
		data := buf[off : off+l]
		switch typ {
		case extBackingFormat:
			if l > maxBackingFormat {
				return format.Corruptf("backing format name is %d bytes (max %d)", l, maxBackingFormat)
			}
			if i := bytes.IndexByte(data, 0); i >= 0 {
				data = data[:i]
			}
			img.backingFormat = string(data)
		case extEncryption:
			return format.Unsupportedf("encrypted image (full disk encryption header)")
		case extDataFile:
			return format.Unsupportedf("external data file %q", strings.TrimRight(string(data), "\x00"))
		case extFeatureTable:
			for i := 0; i+48 <= len(data); i += 48 {
				kind := [...]string{"incompatible", "compatible", "autoclear"}
				k := fmt.Sprintf("type%d", data[i])
				if int(data[i]) < len(kind) {
					k = kind[data[i]]
				}
				n := strings.TrimRight(string(data[i+2:i+48]), "\x00")
				img.features = append(img.features, fmt.Sprintf("%s bit %d: %s", k, data[i+1], n))
			}
		}
		off += (l + 7) &^ 7
	}
	return nil
}

// checkTables checks the L1, refcount and snapshot table locations against
// the file and qemu's limits.
func (img *Image) checkTables(h []byte) error {
	cs := img.clusterSize
	fsize := img.fileSize
	img.l2Bits = img.clusterBits - 3
	if img.extL2 {
		img.l2Bits--
	}
	img.l1Shift = img.clusterBits + img.l2Bits
	needed := (img.headerSize + 1<<img.l1Shift - 1) >> img.l1Shift
	img.l1Size = be32(h, 36)
	img.l1Offset = be64(h, 40)
	if uint64(img.l1Size) < needed {
		return format.Corruptf("L1 table has %d entries, %d needed for the %d-byte virtual size", img.l1Size, needed, img.headerSize)
	}
	if uint64(img.l1Size)*8 > maxL1Bytes {
		return format.Unsupportedf("L1 table of %d entries exceeds qemu's %d-byte limit", img.l1Size, maxL1Bytes)
	}
	if img.l1Size > 0 {
		if int64(img.l1Offset)&img.clusterMask != 0 || img.l1Offset > uint64(fsize) {
			return format.Corruptf("L1 table offset %#x invalid (unaligned or beyond the %d-byte file)", img.l1Offset, fsize)
		}
		if uint64(img.l1Size)*8 > uint64(fsize)-img.l1Offset {
			return format.Corruptf("L1 table at %#x (%d entries) extends beyond the end of the %d-byte file", img.l1Offset, img.l1Size, fsize)
		}
	}
	img.l1 = make([]uint64, needed) // bounded by the file size, checked above

	rto := be64(h, 48)
	rtc := uint64(be32(h, 56))
	if rtc*uint64(cs) > maxRefTableBytes {
		return format.Corruptf("refcount table of %d clusters exceeds qemu's %d-byte limit", rtc, maxRefTableBytes)
	}
	if int64(rto)&img.clusterMask != 0 || rto > uint64(fsize) || rtc*uint64(cs) > uint64(fsize)-rto {
		return format.Corruptf("refcount table at %#x (%d clusters) unaligned or beyond the end of the %d-byte file", rto, rtc, fsize)
	}
	img.nbSnapshots = be32(h, 60)
	if img.nbSnapshots > maxSnapshots {
		return format.Corruptf("%d snapshots (max %d)", img.nbSnapshots, maxSnapshots)
	}
	if so := be64(h, 64); img.nbSnapshots > 0 && (int64(so)&img.clusterMask != 0 || so >= uint64(fsize)) {
		return format.Corruptf("snapshot table offset %#x unaligned or beyond the end of the %d-byte file", so, fsize)
	}
	return nil
}

// readL1 reads the active L1 entries (in chunks, to bound the transient
// buffer) and checks every L2 table they name lies inside the file.
func (img *Image) readL1() error {
	const chunk = 1 << 17 // entries
	buf := make([]byte, min(len(img.l1), chunk)*8)
	for i := 0; i < len(img.l1); i += chunk {
		n := min(len(img.l1)-i, chunk)
		b := buf[:n*8]
		if err := readFull(img.f, b, int64(img.l1Offset)+int64(i)*8); err != nil {
			return fmt.Errorf("read L1 table at %#x: %w", img.l1Offset, err)
		}
		for j := range n {
			e := be64(b, j*8)
			img.l1[i+j] = e
			l2 := e & l1OffsetMask
			if l2 == 0 {
				continue
			}
			if int64(l2)&img.clusterMask != 0 {
				return format.Corruptf("L1 entry %d: L2 table offset %#x not cluster aligned", i+j, l2)
			}
			if l2 > uint64(img.fileSize-img.clusterSize) || img.fileSize < img.clusterSize {
				return format.Corruptf("L1 entry %d: L2 table offset %#x beyond the end of the %d-byte file", i+j, l2, img.fileSize)
			}
		}
	}
	return nil
}

// openBacking opens the backing file through the confined resolver and the
// nested opener only.
func (img *Image) openBacking(opts format.Options) error {
	if img.backingName == "" {
		return nil
	}
	name := img.backingName
	if opts.Resolver == nil {
		return fmt.Errorf("%w: backing file %q: following references is disabled", format.ErrUnsafeReference, name)
	}
	bf, err := opts.Resolver.Open(img.f.Name(), name)
	if err != nil {
		return fmt.Errorf("backing file %q: %w", name, err)
	}
	if bf.Name() == img.f.Name() {
		bf.Close()
		return fmt.Errorf("%w: backing file %q is the image itself", format.ErrReferenceLoop, name)
	}
	if err := opts.CheckChain(bf.Name()); err != nil {
		bf.Close()
		return fmt.Errorf("backing file %q: %w", name, err)
	}
	if opts.Open == nil {
		bf.Close()
		return fmt.Errorf("%w: backing file %q: opening nested images is disabled", format.ErrUnsafeReference, name)
	}
	b, err := opts.Open(bf, format.Type(img.backingFormat), opts.Nested(img.f.Name()))
	if err != nil {
		bf.Close()
		return fmt.Errorf("backing file %q: %w", name, err)
	}
	if err := b.Readable(); err != nil {
		b.Close()
		return fmt.Errorf("backing file %q: %w", name, err)
	}
	img.backing = b
	img.backingSize = max(b.Size(), 0)
	return nil
}

// Close closes the image file and its backing chain.
func (img *Image) Close() error {
	img.closeOnce.Do(func() {
		var errs []error
		if img.backing != nil {
			errs = append(errs, img.backing.Close())
		}
		errs = append(errs, img.f.Close())
		img.closeErr = errors.Join(errs...)
	})
	return img.closeErr
}

// Type is "qcow2".
func (img *Image) Type() format.Type { return Type }

// Size is the virtual size in bytes.
func (img *Image) Size() int64 { return img.size }

// Readable is always nil: Open refuses what cannot be read.
func (img *Image) Readable() error { return nil }

// Info describes the image like `qemu-img info`. AllocatedBytes walks the
// L2 tables (metadata only).
func (img *Image) Info() format.Info {
	info := format.Info{
		Format:        Type,
		Subformat:     fmt.Sprintf("v%d", img.version),
		VirtualSize:   img.size,
		FileSize:      img.fileSize,
		ClusterSize:   img.clusterSize,
		Backing:       img.backingName,
		BackingFormat: img.backingFormat,
	}
	ctype := "zlib"
	if img.zstd {
		ctype = "zstd"
	}
	compat := "0.10"
	if img.version == 3 {
		compat = "1.1"
	}
	d := map[string]any{
		"version":          img.version,
		"compat":           compat,
		"compression_type": ctype,
		"refcount_bits":    1 << img.refcountOrder,
		"extended_l2":      img.extL2,
		"lazy_refcounts":   img.compat&compatLazyRefcounts != 0,
		"dirty":            img.incompat&incDirty != 0,
		"corrupt":          img.incompat&incCorrupt != 0,
		"l1_size":          img.l1Size,
		"l1_table_offset":  img.l1Offset,
		"snapshots":        img.nbSnapshots,
		"bitmaps":          img.autoclear&autoclearBitmaps != 0,
	}
	if img.headerSize != uint64(img.size) {
		d["header_size"] = img.headerSize
	}
	if len(img.features) > 0 {
		d["feature_names"] = img.features
	}
	st, err := img.allocation()
	if err != nil {
		d["allocation_error"] = err.Error()
	}
	info.AllocatedBytes = st.allocated
	if st.compressed > 0 {
		info.Compression = ctype
		d["compressed_bytes"] = st.compressed
	}
	info.Details = d
	if in, ok := img.backing.(format.Inspector); ok {
		bi := in.Info()
		info.BackingInfo = &bi
	}
	return info
}

// allocation counts the bytes stored in this image. An L2 table named by
// several L1 entries is scanned once, so the work is bounded by the file
// size, not by what a hostile L1 table claims.
func (img *Image) allocation() (allocStats, error) {
	var total allocStats
	memo := make(map[uint64]allocStats)
	span := int64(1) << img.l1Shift
	for i, e := range img.l1 {
		l2 := e & l1OffsetMask
		if l2 == 0 {
			continue
		}
		vs := int64(i) << img.l1Shift
		ve := min(img.size, vs+span)
		full := ve-vs == span
		st, ok := memo[l2]
		if !ok || !full {
			st = allocStats{}
			if err := img.walk(vs, ve, &st); err != nil {
				return total, err
			}
			if full {
				memo[l2] = st
			}
		}
		total.allocated += st.allocated
		total.compressed += st.compressed
	}
	return total, nil
}

// allocStats counts the virtual bytes backed by data in this image.
type allocStats struct{ allocated, compressed int64 }

func (s *allocStats) visit(k kind, vs, ve int64, _ uint64) bool {
	switch k {
	case kData:
		s.allocated += ve - vs
	case kCompressed:
		s.allocated += ve - vs
		s.compressed += ve - vs
	}
	return true
}
