package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/hikube/ferry/converter/format"
)

// kind is how a run of the virtual disk is stored in this image.
type kind uint8

const (
	kUnalloc    kind = iota // not in this image: backing file, or zeros
	kZero                   // zero cluster/subcluster: reads as zeros
	kData                   // stored at a host offset
	kCompressed             // one compressed cluster
)

// visitor receives the runs of walk in order. For kData, d is the host
// offset of vs; for kCompressed, the cluster descriptor. Returning false
// stops the walk.
type visitor interface {
	visit(k kind, vs, ve int64, d uint64) bool
}

// walk maps [pos, end) (inside the virtual size) to runs of one kind, at
// most a cluster (or subcluster run) each, except that an unallocated L1
// entry is one run. It reads L2 tables through the cache and never data.
func (img *Image) walk(pos, end int64, v visitor) error {
	cb := img.clusterBits
	cmask := img.clusterMask
	l2mask := int64(1)<<img.l2Bits - 1
	for pos < end {
		l1i := pos >> img.l1Shift
		l1End := min(end, (l1i+1)<<img.l1Shift)
		l2off := img.l1[l1i] & l1OffsetMask
		if l2off == 0 {
			if !v.visit(kUnalloc, pos, l1End, 0) {
				return nil
			}
			pos = l1End
			continue
		}
		tbl, err := img.table(l2off)
		if err != nil {
			return err
		}
		for pos < l1End {
			idx := (pos >> cb) & l2mask
			cStart := pos &^ cmask
			cEnd := min(l1End, cStart+img.clusterSize)
			if img.extL2 {
				if ok, err := img.walkExt(tbl[2*idx], tbl[2*idx+1], pos, cEnd, l2off, idx, v); !ok || err != nil {
					return err
				}
				pos = cEnd
				continue
			}
			e := tbl[idx]
			var k kind
			var d uint64
			switch {
			case e&flagCompressed != 0:
				k, d = kCompressed, e&(flagCompressed-1)
			case e&flagZero != 0:
				if img.version < 3 {
					return format.Corruptf("zero cluster in a v2 image (L2 table %#x, index %d)", l2off, idx)
				}
				k = kZero
			case e&l2OffsetMask == 0:
				k = kUnalloc
			default:
				host := e & l2OffsetMask
				if err := img.checkHost(host, l2off, idx); err != nil {
					return err
				}
				k, d = kData, host+uint64(pos&cmask)
			}
			if !v.visit(k, pos, cEnd, d) {
				return nil
			}
			pos = cEnd
		}
	}
	return nil
}

func (img *Image) checkHost(host, l2off uint64, idx int64) error {
	if int64(host)&img.clusterMask != 0 {
		return format.Corruptf("cluster offset %#x not cluster aligned (L2 table %#x, index %d)", host, l2off, idx)
	}
	if host >= uint64(img.fileSize) {
		return format.Corruptf("cluster offset %#x beyond the end of the %d-byte file (L2 table %#x, index %d)", host, img.fileSize, l2off, idx)
	}
	return nil
}

// walkExt maps [pos, cEnd) inside one cluster with an extended L2 entry:
// 32 subclusters, bitmap bits 0-31 "allocated", 32-63 "reads as zeros".
func (img *Image) walkExt(e, bm uint64, pos, cEnd int64, l2off uint64, idx int64, v visitor) (bool, error) {
	if e&flagCompressed != 0 {
		return v.visit(kCompressed, pos, cEnd, e&(flagCompressed-1)), nil
	}
	alloc, zero := uint32(bm), uint32(bm>>32)
	host := e & l2OffsetMask
	if host == 0 {
		if alloc != 0 {
			return false, format.Corruptf("unallocated cluster with allocated subclusters %#x (L2 table %#x, index %d)", alloc, l2off, idx)
		}
	} else {
		if alloc&zero != 0 {
			return false, format.Corruptf("subclusters %#x both allocated and zero (L2 table %#x, index %d)", alloc&zero, l2off, idx)
		}
		if alloc != 0 {
			if err := img.checkHost(host, l2off, idx); err != nil {
				return false, err
			}
		}
	}
	// Fast paths: the whole cluster has one status.
	switch {
	case alloc == ^uint32(0):
		return v.visit(kData, pos, cEnd, host+uint64(pos&img.clusterMask)), nil
	case zero == ^uint32(0):
		return v.visit(kZero, pos, cEnd, 0), nil
	case alloc == 0 && zero == 0:
		return v.visit(kUnalloc, pos, cEnd, 0), nil
	}
	scBits := img.clusterBits - 5
	cStart := pos &^ img.clusterMask
	of := func(sc uint) kind {
		switch {
		case alloc>>sc&1 != 0:
			return kData
		case zero>>sc&1 != 0:
			return kZero
		}
		return kUnalloc
	}
	for pos < cEnd {
		sc := uint((pos - cStart) >> scBits)
		k := of(sc)
		j := sc + 1
		for j < 32 && of(j) == k {
			j++
		}
		runEnd := min(cEnd, cStart+int64(j)<<scBits)
		var d uint64
		if k == kData {
			d = host + uint64(pos-cStart)
		}
		if !v.visit(k, pos, runEnd, d) {
			return false, nil
		}
		pos = runEnd
	}
	return true, nil
}

// maxExtentVisits bounds the runs one Extent call merges (a few ms): a
// hostile image can map petabytes through one reused L2 table, and a shorter
// extent is always allowed.
const maxExtentVisits = 1 << 20

// extentVisitor collects the first run and extends it while the kind stays
// the same.
type extentVisitor struct {
	k      kind
	s, e   int64
	n      int
	seeded bool
}

func (x *extentVisitor) visit(k kind, vs, ve int64, _ uint64) bool {
	if !x.seeded {
		x.k, x.s, x.e, x.seeded = k, vs, ve, true
		return true
	}
	x.n++
	if k != x.k || vs != x.e || x.n > maxExtentVisits {
		return false
	}
	x.e = ve
	return true
}

// Extent returns the run starting at start, at most length bytes long, with
// one status; unallocated runs report the backing file's status (Zero past
// its end or without one). Metadata only.
func (img *Image) Extent(start, length int64) (format.Extent, error) {
	if start < 0 || length <= 0 || start > img.size-length {
		return format.Extent{}, fmt.Errorf("qcow2: extent [%d, +%d) outside the %d-byte disk", start, length, img.size)
	}
	end := start + length
	var k kind
	var runEnd int64
	cached := false
	if img.backing != nil {
		img.runMu.Lock()
		if start >= img.runStart && start < img.runEnd {
			k, runEnd, cached = kUnalloc, min(img.runEnd, end), true
		}
		img.runMu.Unlock()
	}
	if !cached {
		var x extentVisitor
		if err := img.walk(start, end, &x); err != nil {
			return format.Extent{}, fmt.Errorf("qcow2 %s: %w", img.f.Name(), err)
		}
		k, runEnd = x.k, x.e
		if k == kUnalloc && img.backing != nil {
			img.runMu.Lock()
			img.runStart, img.runEnd = start, runEnd
			img.runMu.Unlock()
		}
	}
	ext := format.Extent{Start: start, Length: runEnd - start}
	switch k {
	case kData:
		ext.Allocated = true
	case kZero:
		ext.Allocated, ext.Zero = true, true
	case kCompressed:
		ext.Allocated, ext.Compressed = true, true
	case kUnalloc:
		if img.backing == nil || start >= img.backingSize {
			ext.Zero = true
			return ext, nil
		}
		lim := min(runEnd, img.backingSize)
		b, err := img.backing.Extent(start, lim-start)
		if err != nil {
			return format.Extent{}, fmt.Errorf("qcow2 %s: backing file: %w", img.f.Name(), err)
		}
		if b.Start != start || b.Length <= 0 || b.Length > lim-start {
			return format.Extent{}, fmt.Errorf("qcow2 %s: backing file returned extent %+v for [%d, %d)", img.f.Name(), b, start, lim)
		}
		return b, nil
	}
	return ext, nil
}

// ReadAt reads the virtual disk. Runs of clusters stored contiguously are
// read with one call on the file, zero and unallocated runs are cleared
// without reading, neighbouring compressed clusters are read together and
// inflated straight into p.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("qcow2: negative offset %d", off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if off >= img.size {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > img.size-off {
		p = p[:img.size-off]
		eof = io.EOF
	}
	r := readers.Get().(*reader)
	r.img, r.p, r.off = img, p, off
	err := img.walk(off, off+int64(len(p)), r)
	if err == nil {
		err = r.err
	}
	if err == nil {
		err = r.flushPlain()
	}
	if err == nil {
		err = r.flushCompressed()
	}
	r.reset()
	readers.Put(r)
	if err != nil {
		return 0, fmt.Errorf("qcow2 %s: %w", img.f.Name(), err)
	}
	return len(p), eof
}

// maxGroup bounds the bytes of one coalesced read of compressed clusters.
const maxGroup = 4 << 20

type reader struct {
	img *Image
	p   []byte
	off int64 // virtual offset of p[0]
	err error

	// Pending plain run [ps, pe) of kind pk (host offset ph for kData).
	pk     kind
	ps, pe int64
	ph     uint64

	// Pending compressed clusters whose host bytes [gs, ge) are adjacent.
	cz     []czCluster
	gs, ge int64
}

type czCluster struct {
	vs, ve     int64 // part of the virtual cluster wanted
	coff, cend int64 // compressed bytes in the file
}

var readers = sync.Pool{New: func() any { return new(reader) }}

func (r *reader) reset() {
	cz := r.cz[:0]
	*r = reader{cz: cz}
}

func (r *reader) visit(k kind, vs, ve int64, d uint64) bool {
	if k == kCompressed {
		r.err = r.addCompressed(vs, ve, d)
		return r.err == nil
	}
	if r.pe == vs && r.pe > r.ps && r.pk == k && (k != kData || r.ph+uint64(r.pe-r.ps) == d) {
		r.pe = ve
		return true
	}
	if r.err = r.flushPlain(); r.err != nil {
		return false
	}
	r.pk, r.ps, r.pe, r.ph = k, vs, ve, d
	return true
}

func (r *reader) flushPlain() error {
	if r.pe <= r.ps {
		return nil
	}
	b := r.p[r.ps-r.off : r.pe-r.off]
	vs := r.ps
	r.ps = r.pe
	switch r.pk {
	case kZero:
		clear(b)
	case kData:
		return r.img.readHost(b, int64(r.ph))
	case kUnalloc:
		return r.img.readBacking(b, vs)
	}
	return nil
}

// readHost reads stored data. A cluster cut by the end of the file reads
// as zeros past it, as in qemu (extended L2 images end mid-cluster).
func (img *Image) readHost(b []byte, host int64) error {
	n, err := img.f.ReadAt(b, host)
	if n == len(b) {
		return nil
	}
	if err != nil && err != io.EOF {
		return fmt.Errorf("read %d bytes at host offset %#x: %w", len(b), host, err)
	}
	clear(b[n:])
	return nil
}

// readBacking reads an unallocated run: from the backing file up to its
// size, zeros past it.
func (img *Image) readBacking(b []byte, vs int64) error {
	if img.backing == nil || vs >= img.backingSize {
		clear(b)
		return nil
	}
	n := len(b)
	if int64(n) > img.backingSize-vs {
		n = int(img.backingSize - vs)
		clear(b[n:])
	}
	m, err := img.backing.ReadAt(b[:n], vs)
	if m == n {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("backing file: read at %d: %w", vs, err)
}

func (r *reader) addCompressed(vs, ve int64, desc uint64) error {
	img := r.img
	coff := int64(desc & img.coffMask)
	nsec := int64(desc>>img.csizeShift&img.csizeMask) + 1
	csize := nsec*512 - coff&511
	if coff >= img.fileSize {
		return format.Corruptf("compressed cluster at %#x (virtual %d) beyond the end of the %d-byte file", coff, vs, img.fileSize)
	}
	// The size is rounded up to sectors: the last one may pass the end of
	// the file, which qemu reads as zeros.
	cend := min(coff+csize, img.fileSize)
	if len(r.cz) > 0 && coff >= r.gs && coff <= r.ge && max(r.ge, cend)-r.gs <= maxGroup {
		r.ge = max(r.ge, cend)
	} else {
		if err := r.flushCompressed(); err != nil {
			return err
		}
		r.gs, r.ge = coff, cend
	}
	r.cz = append(r.cz, czCluster{vs: vs, ve: ve, coff: coff, cend: cend})
	return nil
}

var groupBufs sync.Pool // *[]byte

func (r *reader) flushCompressed() error {
	if len(r.cz) == 0 {
		return nil
	}
	img := r.img
	defer func() { r.cz = r.cz[:0] }()
	need := int(r.ge - r.gs)
	bp, _ := groupBufs.Get().(*[]byte)
	if bp == nil || cap(*bp) < need {
		b := make([]byte, (need+(1<<20)-1)&^(1<<20-1))
		bp = &b
	}
	defer groupBufs.Put(bp)
	buf := (*bp)[:need]
	if err := readFull(img.f, buf, r.gs); err != nil {
		return fmt.Errorf("read compressed clusters at %#x: %w", r.gs, err)
	}
	cs := img.clusterSize
	for _, c := range r.cz {
		src := buf[c.coff-r.gs : c.cend-r.gs]
		cStart := c.vs &^ img.clusterMask
		if c.vs == cStart && c.ve == cStart+cs {
			o := c.vs - r.off
			if err := img.decompress(r.p[o:o+cs:o+cs], src, c); err != nil {
				return err
			}
			continue
		}
		sp := img.scratch.Get().(*[]byte)
		err := img.decompress(*sp, src, c)
		if err == nil {
			copy(r.p[c.vs-r.off:c.ve-r.off], (*sp)[c.vs-cStart:c.ve-cStart])
		}
		img.scratch.Put(sp)
		if err != nil {
			return err
		}
	}
	return nil
}

// decompress inflates one cluster into dst (exactly a cluster, capacity
// capped so a decoder can never write past it).
func (img *Image) decompress(dst, src []byte, c czCluster) error {
	var n int
	var err error
	if img.zstd {
		// qemu packs compressed clusters byte by byte, so the sector-rounded
		// range holds the start of the next one: decode only the first
		// frame, not a second truncated one.
		if fl := zstdFrameLen(src); fl > 0 {
			src = src[:fl]
		}
		n, err = format.DecodeZstd(dst, src)
	} else {
		n, err = format.InflateRaw(dst, src)
	}
	if err != nil {
		if !errors.Is(err, format.ErrCorrupt) {
			err = fmt.Errorf("%w: %v", format.ErrCorrupt, err)
		}
		return fmt.Errorf("compressed cluster at %#x (virtual %d): %w", c.coff, c.vs&^img.clusterMask, err)
	}
	if n != len(dst) {
		return format.Corruptf("compressed cluster at %#x (virtual %d) inflates to %d bytes, not %d", c.coff, c.vs&^img.clusterMask, n, len(dst))
	}
	return nil
}

// zstdFrameLen returns the length of the zstd frame at the start of src,
// or 0 if it cannot tell (the decoder then sees all of src).
func zstdFrameLen(src []byte) int {
	if len(src) < 6 || binary.LittleEndian.Uint32(src) != 0xFD2FB528 {
		return 0
	}
	fhd := src[4]
	single := fhd>>5&1 == 1
	pos := 5
	if !single {
		pos++ // window descriptor
	}
	pos += [4]int{0, 1, 2, 4}[fhd&3] // dictionary ID
	fcs := [4]int{0, 2, 4, 8}[fhd>>6]
	if fcs == 0 && single {
		fcs = 1
	}
	pos += fcs
	for pos+3 <= len(src) {
		bh := int(src[pos]) | int(src[pos+1])<<8 | int(src[pos+2])<<16
		pos += 3
		switch bh >> 1 & 3 {
		case 1: // RLE block: one byte
			pos++
		case 3: // reserved
			return 0
		default:
			pos += bh >> 3
		}
		if bh&1 == 1 {
			if fhd>>2&1 == 1 {
				pos += 4 // content checksum
			}
			if pos > len(src) {
				return 0
			}
			return pos
		}
	}
	return 0
}
