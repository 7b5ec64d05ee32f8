// Package vmdk reads VMware VMDK disk images: hosted sparse extents
// (monolithicSparse, streamOptimized), descriptors naming flat, sparse and
// zero extents (monolithicFlat, twoGbMaxExtentSparse/Flat, vmfs, vmfsThin),
// and delta disks through a parent. Reads match `qemu-img convert -O raw`.
//
// Extent files and parents are opened only through the options' resolver;
// every number an image declares is checked before it is used.
//
// Where ferry deliberately differs from qemu-img 7.2 (qemu's reading would
// silently change the data):
//   - ZERO and RDONLY extents count, as VMware defines them; qemu skips
//     them, shifting every later extent. NOACCESS extents are refused.
//   - a grain, grain table or flat extent beyond the end of its file is
//     corruption (a truncated copy); qemu reads zeros there.
//   - a sparse extent that ends inside a grain ends there; qemu keeps
//     reading that grain into the next extent.
//   - compressed grains without markers may be larger than a grain.
package vmdk

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/hikube/ferry/converter/format"
)

// Type is qemu-img's name for the format.
const Type format.Type = "vmdk"

// probeSize is how much of a file Probe looks at for a text descriptor.
const probeSize = 4096

// Probe reports whether r looks like a VMDK: a sparse extent header
// (KDMV, or COWD so that Open can refuse it clearly), or a small text file
// that is a descriptor.
func Probe(r io.ReaderAt, size int64) bool {
	if size < 4 {
		return false
	}
	buf := make([]byte, min(size, probeSize))
	n, _ := r.ReadAt(buf, 0)
	buf = buf[:n]
	if len(buf) < 4 {
		return false
	}
	switch string(buf[:4]) {
	case magicKDMV:
		// The version is a small number in every real header; requiring
		// it keeps four stray bytes of a raw disk from matching.
		return len(buf) >= 8 && buf[4] <= 3 && buf[5] == 0 && buf[6] == 0 && buf[7] == 0
	case magicCOWD:
		return len(buf) >= 8 && buf[4] == 1 && buf[5] == 0 && buf[6] == 0 && buf[7] == 0
	}
	if size > maxDescriptorSize {
		return false
	}
	text, ok := descriptorText(buf)
	if !ok {
		return false
	}
	text = strings.TrimLeft(strings.TrimPrefix(text, "\ufeff"), " \t\r\n")
	if strings.HasPrefix(text, "# Disk DescriptorFile") {
		return true
	}
	// A descriptor without the usual comment: accept it on a createType
	// assignment at the start of a line.
	for _, line := range strings.Split(text, "\n") {
		if k, _, ok := strings.Cut(strings.TrimSpace(line), "="); ok && strings.TrimSpace(k) == "createType" {
			return true
		}
	}
	return false
}

// Image is an open VMDK. It is safe for concurrent use.
type Image struct {
	f       format.File
	files   []format.File // extent files opened through the resolver
	exts    []*ext
	size    int64
	cache   *gtCache
	parent  format.Image
	desc    *descriptor // nil for a sparse file without descriptor
	subfmt  string
	version uint32 // sparse header version of a monolithic image
	mono    *sparse

	closeOnce sync.Once
	closeErr  error
}

type extKind uint8

const (
	extFlat extKind = iota
	extZero
	extSparse
)

// ext is one extent of the virtual disk.
type ext struct {
	kind    extKind
	start   int64 // virtual offset
	size    int64
	f       format.File
	flatOff int64
	sp      *sparse
	info    format.ExtentFile
}

var (
	_ format.Image     = (*Image)(nil)
	_ format.Inspector = (*Image)(nil)
)

// Open opens the VMDK in f: a sparse extent with its embedded descriptor,
// or a descriptor file whose extents are opened through opts.Resolver. The
// image owns f and the files it opens; Close closes them all.
func Open(f format.File, opts format.Options) (*Image, error) {
	size := f.Size()
	if size < 4 {
		return nil, fmt.Errorf("%w: vmdk: file of %d bytes is too small", format.ErrWrongType, size)
	}
	head := make([]byte, min(size, sectorSize))
	if err := readFull(f, head, 0); err != nil {
		return nil, fmt.Errorf("vmdk: read header: %w", err)
	}
	img := &Image{f: f, cache: newGTCache()}
	var err error
	switch string(head[:4]) {
	case magicKDMV:
		err = img.openMonolithic(head, opts)
	case magicCOWD:
		err = format.Unsupportedf("vmdk: %s is an ESX sparse extent (COWD, vmfsSparse delta); ferry reads hosted sparse, stream-optimized and flat VMDKs", f.Name())
	default:
		if size > maxDescriptorSize {
			return nil, fmt.Errorf("%w: vmdk: no sparse extent magic and too large (%d bytes) for a descriptor", format.ErrWrongType, size)
		}
		buf := make([]byte, size)
		if err := readFull(f, buf, 0); err != nil {
			return nil, fmt.Errorf("vmdk: read descriptor: %w", err)
		}
		text, ok := descriptorText(buf)
		if !ok {
			return nil, fmt.Errorf("%w: vmdk: not a sparse extent and not a text descriptor", format.ErrWrongType)
		}
		err = img.openDescriptor(text, opts)
	}
	if err != nil {
		img.closeOpened()
		return nil, err
	}
	return img, nil
}

// openMonolithic opens a file starting with a hosted sparse header.
func (img *Image) openMonolithic(head []byte, opts format.Options) error {
	f := img.f
	size := f.Size()
	if len(head) < sectorSize {
		return format.Corruptf("vmdk %s: sparse header truncated (%d bytes)", f.Name(), size)
	}
	h := parseHeader(head)
	if h.capacity == 0 && h.descOffset != 0 && h.gdOffset != gdAtEnd {
		// A sparse header carrying only a descriptor: qemu reads it as a
		// descriptor file.
		text, err := readEmbedded(f, h, true)
		if err != nil {
			return err
		}
		return img.openDescriptor(text, opts)
	}
	sp, err := openSparse(f, f.Name(), head)
	if err != nil {
		return err
	}
	img.mono = sp
	img.version = sp.hdr.version
	text, err := readEmbedded(f, h, false)
	if err != nil {
		return err
	}
	if text != "" {
		if img.desc, err = parseDescriptor(text, true); err != nil {
			return err
		}
	}
	// Like qemu, the subformat comes from the header, not the descriptor.
	img.subfmt = "monolithicSparse"
	if sp.compressed {
		img.subfmt = "streamOptimized"
	}
	info := format.ExtentFile{Access: "RW", Sectors: sp.capacity / sectorSize, Type: "SPARSE", File: filepath.Base(f.Name())}
	if img.desc != nil && len(img.desc.extents) == 1 && img.desc.extents[0].hasFile {
		info.File = img.desc.extents[0].file
	}
	img.exts = []*ext{{kind: extSparse, size: sp.capacity, f: f, sp: sp, info: info}}
	img.size = sp.capacity
	return img.openParent(opts)
}

// readEmbedded returns the descriptor embedded in a sparse file ("" when
// there is none). Required is set when the descriptor is all the file has.
func readEmbedded(f format.File, h header, required bool) (string, error) {
	size := f.Size()
	if h.descOffset == 0 || (h.descSize == 0 && !required) {
		if required {
			return "", format.Corruptf("vmdk %s: header has neither capacity nor descriptor", f.Name())
		}
		return "", nil
	}
	if h.descOffset >= uint64(size)/sectorSize {
		return "", format.Corruptf("vmdk %s: descriptor at sector %d lies outside the file (%d bytes)", f.Name(), h.descOffset, size)
	}
	off := int64(h.descOffset) * sectorSize
	n := min(size-off, maxDescriptorSize)
	if h.descSize != 0 && h.descSize < maxDescriptorSize/sectorSize {
		n = min(n, int64(h.descSize)*sectorSize)
	}
	buf := make([]byte, n)
	if err := readFull(f, buf, off); err != nil {
		return "", fmt.Errorf("vmdk %s: read descriptor: %w", f.Name(), err)
	}
	// The descriptor area is padded with NULs; what follows the first one
	// is not part of it.
	if i := bytes.IndexByte(buf, 0); i >= 0 {
		buf = buf[:i]
	}
	if !isText(buf) {
		return "", format.Corruptf("vmdk %s: embedded descriptor at offset %d is not text", f.Name(), off)
	}
	return string(buf), nil
}

// createTypes naming devices or partitions rather than files.
var deviceCreateTypes = map[string]bool{
	"fullDevice": true, "partitionedDevice": true, "vmfsRaw": true, "vmfsRDM": true,
	"vmfsRDMP": true, "vmfsPassthroughRawDeviceMap": true, "vmfsRawDeviceMap": true,
}

// openDescriptor opens the extents a descriptor lists.
func (img *Image) openDescriptor(text string, opts format.Options) error {
	d, err := parseDescriptor(text, false)
	if err != nil {
		return err
	}
	img.desc = d
	name := img.f.Name()
	if d.createType == "" {
		return format.Corruptf("vmdk descriptor %s has no createType", name)
	}
	if deviceCreateTypes[d.createType] {
		return format.Unsupportedf("vmdk descriptor %s: createType %q maps a raw device, not files", name, d.createType)
	}
	img.subfmt = d.createType
	if len(d.extents) == 0 {
		return format.Corruptf("vmdk descriptor %s lists no extents", name)
	}
	byRef := map[string]format.File{}
	openRef := func(e extentLine) (format.File, error) {
		if f, ok := byRef[e.file]; ok {
			return f, nil
		}
		if opts.Resolver == nil {
			return nil, fmt.Errorf("vmdk: extent %q (line %d of %s): %w: no resolver, referenced files are not followed", e.file, e.line, name, format.ErrUnsafeReference)
		}
		f, err := opts.Resolver.Open(name, e.file)
		if err != nil {
			return nil, fmt.Errorf("vmdk: extent %q (line %d of %s): %w", e.file, e.line, name, err)
		}
		byRef[e.file] = f
		img.files = append(img.files, f)
		return f, nil
	}
	var pos int64
	for _, e := range d.extents {
		where := fmt.Sprintf("vmdk descriptor %s line %d", name, e.line)
		if e.access == "NOACCESS" {
			return format.Unsupportedf("%s: NOACCESS extent (its data cannot be read)", where)
		}
		if e.sectors == 0 {
			continue // qemu skips empty extents too
		}
		if e.sectors > format.MaxVirtualSize/sectorSize {
			return format.Corruptf("%s: extent of %d sectors exceeds the size limit", where, e.sectors)
		}
		x := &ext{start: pos, size: e.sectors * sectorSize,
			info: format.ExtentFile{Access: e.access, Sectors: e.sectors, Type: e.typ, File: e.file, Offset: e.offset}}
		switch e.typ {
		case "ZERO":
			x.kind = extZero
		case "FLAT", "VMFS":
			if !e.hasFile {
				return format.Corruptf("%s: %s extent without a file name", where, e.typ)
			}
			if e.typ == "FLAT" && !e.hasOffset {
				return format.Corruptf("%s: FLAT extent without an offset", where)
			}
			if e.offset > format.MaxVirtualSize/sectorSize {
				return format.Corruptf("%s: offset %d sectors is out of range", where, e.offset)
			}
			f, err := openRef(e)
			if err != nil {
				return err
			}
			x.kind, x.f, x.flatOff = extFlat, f, e.offset*sectorSize
			// qemu would read missing bytes as zeros; a short flat file is a
			// truncated copy, and silently zero-filling it loses data.
			if need := x.flatOff + x.size; need > f.Size() {
				return format.Corruptf("vmdk: flat extent %q (line %d of %s) needs %d bytes but the file has %d (truncated?)", e.file, e.line, name, need, f.Size())
			}
		case "SPARSE":
			if !e.hasFile || e.hasOffset {
				return format.Corruptf("%s: SPARSE extent needs a file name and no offset", where)
			}
			f, err := openRef(e)
			if err != nil {
				return err
			}
			sp, err := openSparseExtent(f, e.file)
			if err != nil {
				return fmt.Errorf("vmdk: extent %q (line %d of %s): %w", e.file, e.line, name, err)
			}
			sp.id = len(img.exts)
			// qemu sizes a sparse extent by its header, not the descriptor.
			x.kind, x.f, x.sp, x.size = extSparse, f, sp, sp.capacity
			x.info.Sectors = sp.capacity / sectorSize
		case "VMFSSPARSE", "SESPARSE":
			return format.Unsupportedf("%s: %s extent (ESX snapshot delta); consolidate the snapshot or export the disk first", where, e.typ)
		case "VMFSRDM", "VMFSRAW", "VMFSRDMP", "VMFSPASSTHRU":
			return format.Unsupportedf("%s: %s extent maps a raw device", where, e.typ)
		default:
			return format.Unsupportedf("%s: extent type %q", where, e.typ)
		}
		if x.size == 0 {
			continue
		}
		pos += x.size
		if pos > format.MaxVirtualSize {
			return format.Corruptf("vmdk descriptor %s: extents add up to more than %d bytes", name, format.MaxVirtualSize)
		}
		img.exts = append(img.exts, x)
	}
	img.size = pos
	return img.openParent(opts)
}

// openSparseExtent opens the sparse file an extent line names.
func openSparseExtent(f format.File, name string) (*sparse, error) {
	if f.Size() < sectorSize {
		return nil, format.Corruptf("sparse extent %s is only %d bytes", name, f.Size())
	}
	head := make([]byte, sectorSize)
	if err := readFull(f, head, 0); err != nil {
		return nil, err
	}
	switch string(head[:4]) {
	case magicKDMV:
	case magicCOWD:
		return nil, format.Unsupportedf("sparse extent %s is an ESX (COWD) sparse extent", name)
	default:
		return nil, format.Corruptf("sparse extent %s has no sparse header (magic %q)", name, head[:4])
	}
	if h := parseHeader(head); h.capacity == 0 && h.descOffset != 0 && h.gdOffset != gdAtEnd {
		return nil, format.Unsupportedf("sparse extent %s is itself a descriptor", name)
	}
	return openSparse(f, name, head)
}

// openParent opens the parent of a delta disk (parentFileNameHint).
func (img *Image) openParent(opts format.Options) error {
	d := img.desc
	if d == nil || !d.hasParentHint || d.parentHint == "" {
		return nil
	}
	name := img.f.Name()
	if opts.Resolver == nil {
		return fmt.Errorf("vmdk: parent %q of %s: %w: no resolver, referenced files are not followed", d.parentHint, name, format.ErrUnsafeReference)
	}
	pf, err := opts.Resolver.Open(name, d.parentHint)
	if err != nil {
		return fmt.Errorf("vmdk: parent %q of %s: %w", d.parentHint, name, err)
	}
	nested := opts.Nested(name)
	if err := nested.CheckChain(pf.Name()); err != nil {
		pf.Close()
		return fmt.Errorf("vmdk: parent %q of %s: %w", d.parentHint, name, err)
	}
	if opts.Open == nil {
		pf.Close()
		return format.Unsupportedf("vmdk: %s is a delta disk and nested images cannot be opened here (parent %q)", name, d.parentHint)
	}
	parent, err := opts.Open(pf, Type, nested)
	if err != nil {
		pf.Close()
		return fmt.Errorf("vmdk: parent %q of %s: %w", d.parentHint, name, err)
	}
	// qemu refuses to read through a parent whose CID is not the one the
	// child was made from: the parent changed since.
	if p, ok := parent.(*Image); ok && p.desc != nil && p.desc.hasCID && d.hasParentCID && p.desc.cid != d.parentCID {
		parent.Close()
		return format.Corruptf("vmdk: %s expects parent CID %08x but %q has CID %08x (the parent was modified)", name, d.parentCID, d.parentHint, p.desc.cid)
	}
	img.parent = parent
	return nil
}

// closeOpened closes what Open opened when it fails (not f, which the
// caller still owns then).
func (img *Image) closeOpened() {
	for _, f := range img.files {
		f.Close()
	}
	if img.parent != nil {
		img.parent.Close()
	}
}

// Close closes the image file, every extent file and the parent.
func (img *Image) Close() error {
	img.closeOnce.Do(func() {
		errs := []error{img.f.Close()}
		for _, f := range img.files {
			errs = append(errs, f.Close())
		}
		if img.parent != nil {
			errs = append(errs, img.parent.Close())
		}
		img.closeErr = errors.Join(errs...)
	})
	return img.closeErr
}

// Type returns "vmdk".
func (img *Image) Type() format.Type { return Type }

// Size is the virtual disk size in bytes.
func (img *Image) Size() int64 { return img.size }

// Readable returns nil: unsupported images are refused by Open.
func (img *Image) Readable() error { return nil }

// findExt returns the index of the extent holding off (off < size).
func (img *Image) findExt(off int64) int {
	return sort.Search(len(img.exts), func(i int) bool {
		e := img.exts[i]
		return e.start+e.size > off
	})
}

// ReadAt reads the virtual disk.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("vmdk: negative offset %d", off)
	}
	if off >= img.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := len(p)
	var eof error
	if int64(n) > img.size-off {
		n, eof = int(img.size-off), io.EOF
	}
	done := 0
	for i := img.findExt(off); done < n; i++ {
		e := img.exts[i]
		rel := off + int64(done) - e.start
		m := int(min(int64(n-done), e.size-rel))
		if err := img.readExt(e, p[done:done+m], rel); err != nil {
			return done, err
		}
		done += m
	}
	return n, eof
}

func (img *Image) readExt(e *ext, p []byte, rel int64) error {
	switch e.kind {
	case extZero:
		clear(p)
		return nil
	case extFlat:
		if err := readFull(e.f, p, e.flatOff+rel); err != nil {
			return fmt.Errorf("vmdk: flat extent %q at %d: %w", e.info.File, e.flatOff+rel, err)
		}
		return nil
	}
	return img.readSparse(e, p, rel)
}

var segPool = sync.Pool{New: func() any { s := make([]seg, 0, 64); return &s }}

func (img *Image) readSparse(e *ext, p []byte, rel int64) error {
	s := e.sp
	sp := segPool.Get().(*[]seg)
	defer segPool.Put(sp)
	segs, err := s.plan(img.cache, (*sp)[:0], len(p), rel)
	*sp = segs[:0]
	if err != nil {
		return err
	}
	ncomp := 0
	for _, x := range segs {
		b := p[x.off : x.off+x.n]
		switch x.st {
		case stUnalloc:
			if err := img.readParent(b, e.start+rel+int64(x.off)); err != nil {
				return err
			}
		case stZero:
			clear(b)
		case stData:
			if err := s.readPlain(b, x.host); err != nil {
				return err
			}
		case stComp:
			segs[ncomp] = x // gather in place (ncomp <= current index)
			ncomp++
		}
	}
	if ncomp > 0 {
		return s.readCompressed(p, segs[:ncomp])
	}
	return nil
}

// readParent reads unallocated grains from the parent; beyond the parent's
// end, and without a parent, they read as zeros (as in qemu).
func (img *Image) readParent(b []byte, voff int64) error {
	n := 0
	if img.parent != nil {
		if ps := img.parent.Size(); voff < ps {
			n = int(min(int64(len(b)), ps-voff))
			m, err := img.parent.ReadAt(b[:n], voff)
			if m < n {
				if err == nil || err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return fmt.Errorf("vmdk: read parent at %d: %w", voff, err)
			}
		}
	}
	clear(b[n:])
	return nil
}

// Extent returns the run starting at start with one allocation status,
// merging across extent boundaries. Metadata only.
func (img *Image) Extent(start, length int64) (format.Extent, error) {
	if start < 0 || start >= img.size || length <= 0 {
		return format.Extent{}, fmt.Errorf("vmdk: extent [%d, +%d) out of range (size %d)", start, length, img.size)
	}
	end := min(start+length, img.size)
	i := img.findExt(start)
	st, n, err := img.extStatus(img.exts[i], start-img.exts[i].start, end-start)
	if err != nil {
		return format.Extent{}, err
	}
	if st == stUnalloc && img.parent != nil {
		return img.parentExtent(start, n)
	}
	pos := start + n
	want := toExtent(st)
	for pos < end && i+1 < len(img.exts) && pos == img.exts[i].start+img.exts[i].size {
		i++
		st2, n2, err := img.extStatus(img.exts[i], 0, end-pos)
		if err != nil {
			return format.Extent{}, err
		}
		if toExtent(st2) != want || st2 == stUnalloc && img.parent != nil {
			break
		}
		pos += n2
	}
	want.Start, want.Length = start, pos-start
	return want, nil
}

func (img *Image) extStatus(e *ext, rel, max int64) (grainStatus, int64, error) {
	max = min(max, e.size-rel)
	switch e.kind {
	case extZero:
		return stZero, max, nil
	case extFlat:
		st := stFlat
		hole, n := format.HolesOf(e.f).Probe(e.flatOff+rel, max)
		if hole {
			st = stHole
		}
		return st, n, nil
	}
	return e.sp.extent(img.cache, rel, max)
}

func toExtent(st grainStatus) format.Extent {
	switch st {
	case stUnalloc, stHole:
		return format.Extent{Zero: true}
	case stZero:
		return format.Extent{Allocated: true, Zero: true}
	case stComp:
		return format.Extent{Allocated: true, Compressed: true}
	default:
		return format.Extent{Allocated: true}
	}
}

// parentExtent describes an unallocated run [start, start+n) through the
// parent.
func (img *Image) parentExtent(start, n int64) (format.Extent, error) {
	ps := img.parent.Size()
	if start >= ps {
		return format.Extent{Start: start, Length: n, Zero: true}, nil
	}
	pe, err := img.parent.Extent(start, min(n, ps-start))
	if err != nil {
		return format.Extent{}, fmt.Errorf("vmdk: parent: %w", err)
	}
	if pe.Start != start || pe.Length <= 0 {
		return format.Extent{}, fmt.Errorf("vmdk: parent returned extent %+v for offset %d", pe, start)
	}
	pe.Length = min(pe.Length, n)
	return pe, nil
}

// Info describes the image like `qemu-img info`.
func (img *Image) Info() format.Info {
	in := format.Info{
		Format:      Type,
		Subformat:   img.subfmt,
		VirtualSize: img.size,
		FileSize:    img.f.Size(),
	}
	for _, f := range img.files {
		in.FileSize += f.Size()
	}
	for _, e := range img.exts {
		in.Extents = append(in.Extents, e.info)
		switch e.kind {
		case extFlat:
			in.AllocatedBytes += e.size
		case extSparse:
			if in.ClusterSize == 0 {
				in.ClusterSize = e.sp.grainSize
			}
			if e.sp.compressed {
				in.Compression = "deflate"
			}
			in.AllocatedBytes += img.allocated(e.sp)
		}
	}
	det := map[string]any{}
	if img.mono != nil {
		det["version"] = img.version
		det["zeroed_grain"] = img.mono.zeroGrain
	}
	if d := img.desc; d != nil {
		if img.mono == nil {
			det["version"] = d.version
		}
		if d.hasCID {
			det["cid"] = d.cid
		}
		if d.hasParentCID {
			det["parent_cid"] = d.parentCID
		}
		if d.adapterType != "" {
			det["adapter_type"] = d.adapterType
		}
		if d.hwVersion != "" {
			det["hw_version"] = d.hwVersion
		}
		if d.toolsVersion != "" {
			det["tools_version"] = d.toolsVersion
		}
		if d.hasParentHint && d.parentHint != "" {
			in.Backing = d.parentHint
			in.BackingFormat = string(Type)
		}
	}
	in.Details = det
	if pi, ok := img.parent.(format.Inspector); ok {
		bi := pi.Info()
		in.BackingInfo = &bi
	}
	return in
}

// allocated counts the bytes of grains stored in s (plain, compressed; not
// zeroed grains). Unreadable tables are skipped: Info reports, it does not
// validate. Tables are counted once per file offset, so a hostile directory
// repeating one table costs no more than the table.
func (img *Image) allocated(s *sparse) int64 {
	var total int64
	seen := map[uint32]int64{}
	last := int64(len(s.gd)) - 1
	for gti := range s.gd {
		g := int64(gti)
		if s.skipGT(g) {
			continue
		}
		if n, ok := seen[s.gd[gti]]; ok && g != last {
			total += n
			continue
		}
		gt, err := img.cache.get(s, g)
		if err != nil {
			continue
		}
		var n int64
		for i, gte := range gt {
			if st := s.status(gte); st == stData || st == stComp {
				if gv := (g*s.gtes + int64(i)) * s.grainSize; gv < s.capacity {
					n += s.validLen(gv)
				}
			}
		}
		if g != last {
			seen[s.gd[gti]] = n
		}
		total += n
	}
	return total
}
