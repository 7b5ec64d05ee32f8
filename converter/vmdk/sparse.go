package vmdk

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"sync/atomic"

	"github.com/hikube/ferry/converter/format"
)

const (
	sectorSize = 512

	magicKDMV = "KDMV" // hosted sparse extent (VMDK4)
	magicCOWD = "COWD" // ESX sparse extent (VMDK3)

	flagNLDetect  = 1 << 0
	flagRGD       = 1 << 1
	flagZeroGrain = 1 << 2 // GTE 1 means "zeroed grain"
	flagCompress  = 1 << 16
	flagMarkers   = 1 << 17

	compressNone    = 0
	compressDeflate = 1

	gdAtEnd = 0xffffffffffffffff

	markerEOS    = 0
	markerGT     = 1
	markerGD     = 2
	markerFooter = 3

	// Grain size limits. VMware requires a power of two above 8 sectors
	// and writes 128; qemu accepts up to 1 GiB. 2 MiB bounds the grain
	// buffers of compressed reads while allowing anything real.
	minGrainSectors = 1
	maxGrainSectors = 4096
	// qemu refuses more than 512 entries per grain table; VMware always
	// writes 512.
	maxGTEsPerGT = 512
	// qemu's bound on the grain directory (32M entries, 128 MiB).
	maxGDEntries = 32 << 20
)

// header is the 512-byte hosted sparse extent header (little endian).
type header struct {
	version     uint32
	flags       uint32
	capacity    uint64 // sectors
	grainSize   uint64 // sectors
	descOffset  uint64 // sectors
	descSize    uint64 // sectors
	numGTEs     uint32
	rgdOffset   uint64 // sectors
	gdOffset    uint64 // sectors
	overhead    uint64 // sectors: where grains start
	compression uint16
}

func parseHeader(b []byte) header {
	le := binary.LittleEndian
	return header{
		version:     le.Uint32(b[4:]),
		flags:       le.Uint32(b[8:]),
		capacity:    le.Uint64(b[12:]),
		grainSize:   le.Uint64(b[20:]),
		descOffset:  le.Uint64(b[28:]),
		descSize:    le.Uint64(b[36:]),
		numGTEs:     le.Uint32(b[44:]),
		rgdOffset:   le.Uint64(b[48:]),
		gdOffset:    le.Uint64(b[56:]),
		overhead:    le.Uint64(b[64:]),
		compression: le.Uint16(b[77:]),
	}
}

// checkGeometry validates what both the random-access and the stream reader
// rely on: version, compression, grain size and capacity.
func (h *header) checkGeometry(name string) error {
	if h.version > 3 {
		return format.Unsupportedf("vmdk %s: sparse extent version %d (ferry reads 1 to 3)", name, h.version)
	}
	if h.compression != compressNone && h.compression != compressDeflate {
		return format.Unsupportedf("vmdk %s: compression algorithm %d (only deflate is defined)", name, h.compression)
	}
	if h.grainSize < minGrainSectors || h.grainSize > maxGrainSectors || h.grainSize&(h.grainSize-1) != 0 {
		return format.Corruptf("vmdk %s: grain size %d sectors (want a power of two from %d to %d)", name, h.grainSize, minGrainSectors, maxGrainSectors)
	}
	if h.capacity > uint64(format.MaxVirtualSize/sectorSize) {
		return format.Corruptf("vmdk %s: capacity %d sectors exceeds the %d-byte limit", name, h.capacity, format.MaxVirtualSize)
	}
	return nil
}

// sparse is a hosted sparse extent (monolithicSparse, streamOptimized, or
// one file of twoGbMaxExtentSparse).
type sparse struct {
	f          format.File
	name       string
	id         int // key of this extent's grain tables in the cache
	hdr        header
	capacity   int64 // bytes
	grainSize  int64 // bytes
	grainShift uint
	gtes       int64 // entries per grain table
	gtBytes    int64 // bytes of one grain table in the file
	gtCover    int64 // virtual bytes covered by one grain table
	gd         []uint32
	compressed bool
	markers    bool
	zeroGrain  bool
	fileSize   int64
	gdAtEnd    bool
	// emptyGT marks grain tables found all zero, so later walks skip
	// them like absent ones (qemu preallocates every table).
	emptyGT []atomic.Uint64
}

func (s *sparse) skipGT(gti int64) bool {
	return s.gd[gti] == 0 || s.emptyGT[gti/64].Load()&(1<<(gti%64)) != 0
}

func (s *sparse) markEmpty(gti int64) {
	s.emptyGT[gti/64].Or(1 << (gti % 64))
}

// openSparse parses the sparse extent in f, whose first sector is hdr0.
func openSparse(f format.File, name string, hdr0 []byte) (*sparse, error) {
	h := parseHeader(hdr0)
	size := f.Size()
	s := &sparse{f: f, name: name, fileSize: size}
	if h.gdOffset == gdAtEnd {
		// streamOptimized written as a stream: the real header is the
		// footer, in the second-to-last sector before the end-of-stream
		// marker. qemu reads it at the sector-rounded size - 1536.
		end := (size + sectorSize - 1) &^ (sectorSize - 1)
		if end < 4*sectorSize {
			return nil, format.Corruptf("vmdk %s: header says the grain directory is at the end, but the file (%d bytes) is too small for a footer", name, size)
		}
		var ft [3 * sectorSize]byte
		if err := readFull(f, ft[:], end-3*sectorSize); err != nil {
			return nil, fmt.Errorf("vmdk %s: read footer: %w", name, err)
		}
		le := binary.LittleEndian
		if string(ft[512:516]) != magicKDMV ||
			le.Uint32(ft[8:]) != 0 || le.Uint32(ft[12:]) != markerFooter ||
			le.Uint64(ft[1024:]) != 0 || le.Uint32(ft[1032:]) != 0 || le.Uint32(ft[1036:]) != markerEOS {
			return nil, format.Corruptf("vmdk %s: invalid footer at offset %d (the file may be truncated)", name, end-3*sectorSize)
		}
		h = parseHeader(ft[512:1024])
		if h.gdOffset == gdAtEnd {
			return nil, format.Corruptf("vmdk %s: footer has no grain directory offset", name)
		}
		s.gdAtEnd = true
	}
	s.hdr = h
	if err := h.checkGeometry(name); err != nil {
		return nil, err
	}
	if h.numGTEs == 0 || h.numGTEs > maxGTEsPerGT {
		return nil, format.Corruptf("vmdk %s: %d entries per grain table (want 1 to %d)", name, h.numGTEs, maxGTEsPerGT)
	}
	if h.overhead > uint64((size+sectorSize-1)/sectorSize) {
		return nil, format.Corruptf("vmdk %s: file truncated: grains start at %d but the file has %d bytes", name, h.overhead*sectorSize, size)
	}
	s.capacity = int64(h.capacity) * sectorSize
	s.grainSize = int64(h.grainSize) * sectorSize
	s.grainShift = uint(bits.TrailingZeros64(uint64(s.grainSize)))
	s.gtes = int64(h.numGTEs)
	s.gtBytes = s.gtes * 4
	s.gtCover = s.gtes * s.grainSize
	s.compressed = h.compression == compressDeflate
	s.markers = h.flags&flagMarkers != 0
	s.zeroGrain = h.flags&flagZeroGrain != 0

	nGD := (s.capacity + s.gtCover - 1) / s.gtCover
	if nGD > maxGDEntries {
		return nil, format.Corruptf("vmdk %s: grain directory of %d entries exceeds %d", name, nGD, maxGDEntries)
	}
	if nGD == 0 {
		return s, nil
	}
	gdOff := h.gdOffset * sectorSize
	if h.gdOffset == 0 || h.gdOffset > uint64(size)/sectorSize || int64(gdOff)+nGD*4 > size {
		return nil, format.Corruptf("vmdk %s: grain directory (%d entries at sector %d) lies outside the file (%d bytes)", name, nGD, h.gdOffset, size)
	}
	raw := make([]byte, nGD*4)
	if err := readFull(f, raw, int64(gdOff)); err != nil {
		return nil, fmt.Errorf("vmdk %s: read grain directory: %w", name, err)
	}
	s.gd = make([]uint32, nGD)
	s.emptyGT = make([]atomic.Uint64, (nGD+63)/64)
	for i := range s.gd {
		gt := binary.LittleEndian.Uint32(raw[i*4:])
		if gt != 0 && int64(gt)*sectorSize+s.gtBytes > size {
			return nil, format.Corruptf("vmdk %s: grain table %d at sector %d lies beyond the end of the file (%d bytes)", name, i, gt, size)
		}
		s.gd[i] = gt
	}
	return s, nil
}

// grain status, as found in a grain table entry.
type grainStatus uint8

const (
	stUnalloc grainStatus = iota // read from the parent, or zeros
	stZero                       // zeroed grain (GTE 1 with the flag): zeros, hides the parent
	stData                       // plain grain
	stComp                       // compressed grain
	stFlat                       // flat extent
	stHole                       // hole in a flat extent file: zeros, hides the parent
)

func (s *sparse) status(gte uint32) grainStatus {
	switch {
	case gte == 0:
		return stUnalloc
	case gte == 1 && s.zeroGrain:
		return stZero
	case s.compressed:
		return stComp
	default:
		return stData
	}
}

// extent returns the status of the grain holding rel and how many bytes
// from rel (at most max) share it. Whole unallocated grain tables are
// skipped without reading anything.
func (s *sparse) extent(c *gtCache, rel, max int64) (grainStatus, int64, error) {
	end := min(rel+max, s.capacity)
	pos := rel
	first := true
	var st grainStatus
	for pos < end {
		gti := pos / s.gtCover
		gtEnd := min((gti+1)*s.gtCover, end)
		if s.skipGT(gti) {
			if !first && st != stUnalloc {
				break
			}
			st, first = stUnalloc, false
			pos = gtEnd
			continue
		}
		gt, err := c.get(s, gti)
		if err != nil {
			return 0, 0, err
		}
		for pos < gtEnd {
			g := pos >> s.grainShift
			gs := s.status(gt[g%s.gtes])
			if first {
				st, first = gs, false
			} else if gs != st {
				return st, pos - rel, nil
			}
			pos = (g + 1) << s.grainShift
		}
	}
	return st, min(pos, end) - rel, nil
}

// seg is one piece of a read plan: a run of bytes of p with one source.
type seg struct {
	st   grainStatus
	off  int // into p
	n    int
	host int64 // stData: file offset of p[off]; stComp: grain marker offset
	in   int64 // stComp: offset of p[off] inside the grain
	gv   int64 // stComp: virtual offset of the grain in the extent
	hint int64 // stComp: file offset of the next grain in the table, or 0
}

// plan maps p, read from rel in the extent, to segments, merging runs of
// zeros and host-contiguous plain grains.
func (s *sparse) plan(c *gtCache, segs []seg, n int, rel int64) ([]seg, error) {
	pos, end := rel, rel+int64(n)
	add := func(x seg) {
		if k := len(segs) - 1; k >= 0 {
			last := &segs[k]
			if last.st == x.st && (x.st == stUnalloc || x.st == stZero ||
				x.st == stData && last.host+int64(last.n) == x.host) {
				last.n += x.n
				return
			}
		}
		segs = append(segs, x)
	}
	for pos < end {
		gti := pos / s.gtCover
		gtEnd := min((gti+1)*s.gtCover, end)
		if s.skipGT(gti) {
			add(seg{st: stUnalloc, off: int(pos - rel), n: int(gtEnd - pos)})
			pos = gtEnd
			continue
		}
		gt, err := c.get(s, gti)
		if err != nil {
			return segs, err
		}
		for pos < gtEnd {
			g := pos >> s.grainShift
			gStart := g << s.grainShift
			stop := min(gStart+s.grainSize, gtEnd)
			idx := g % s.gtes
			gte := gt[idx]
			x := seg{st: s.status(gte), off: int(pos - rel), n: int(stop - pos)}
			switch x.st {
			case stData:
				x.host = int64(gte)*sectorSize + (pos - gStart)
			case stComp:
				x.host = int64(gte) * sectorSize
				x.in = pos - gStart
				x.gv = gStart
				if idx+1 < s.gtes && gt[idx+1] > gte {
					x.hint = int64(gt[idx+1]) * sectorSize
				}
			}
			add(x)
			pos = stop
		}
	}
	return segs, nil
}

// validLen is how many bytes of the grain at virtual offset gv lie inside
// the extent: the grain size except for a last, partial grain.
func (s *sparse) validLen(gv int64) int64 {
	return min(s.grainSize, s.capacity-gv)
}

// readPlain reads a host-contiguous run of plain grains.
func (s *sparse) readPlain(p []byte, host int64) error {
	if host < 0 || host+int64(len(p)) > s.fileSize {
		return format.Corruptf("vmdk %s: grain data at offset %d (%d bytes) lies beyond the end of the file (%d bytes)", s.name, host, len(p), s.fileSize)
	}
	if err := readFull(s.f, p, host); err != nil {
		return fmt.Errorf("vmdk %s: read grains at %d: %w", s.name, host, err)
	}
	return nil
}

// maxCompressed is the largest compressed grain accepted, as in qemu (two
// grains: incompressible data grows a little under deflate).
func (s *sparse) maxCompressed() int64 { return 2 * s.grainSize }

// compSpan is how many file bytes from a grain marker at host may belong to
// its grain, for sizing a read before the marker is known.
func (s *sparse) compSpan(host, hint int64) int64 {
	n := (12 + s.maxCompressed() + sectorSize - 1) &^ (sectorSize - 1)
	if hint > host && hint-host < n {
		n = hint - host
	}
	return min(n, s.fileSize-host)
}

// readFull reads len(p) bytes at off, treating a short read as corruption
// (the caller checked the range against the file size, so a short read means
// the file shrank or lied about its size).
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		return format.Corruptf("short read: %d of %d bytes at offset %d", n, len(p), off)
	}
	return err
}
