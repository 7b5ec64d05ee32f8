package vhdx

import (
	"encoding/binary"
	"hash/crc32"
	"os"
	"sort"
	"testing"
)

// builder writes VHDX files by hand, for what qemu-img cannot make: 4 KiB
// logical sectors, unknown regions and metadata items, log entries, odd
// BAT states, and small fuzz seeds.
type builder struct {
	vsize     int64
	blockSize uint32
	logical   uint32
	physical  uint32
	flags     uint32 // file parameters: 1 leave_blocks_allocated, 2 has_parent
	logGUID   guid
	logLength uint32
	seq       [2]uint64
	// blocks holds the data of FULLY_PRESENT blocks, placed one after the
	// other past the metadata region.
	blocks map[int64][]byte
	// states sets other BAT states (offset 0) by block.
	states map[int64]uint64
	// raw BAT entries by block, overriding the above.
	rawEntries   map[int64]uint64
	extraRegions []region
	extraMeta    []extraItem
	skipMeta     guid
	logData      []byte // written at the start of the log
	// fileSize, when set, truncates or extends the file.
	fileSize int64
}

type extraItem struct {
	id    guid
	flags uint32
	data  []byte
}

func newBuilder(vsize int64, blockSize uint32) *builder {
	return &builder{vsize: vsize, blockSize: blockSize, logical: 512, physical: 4096, logLength: miB,
		seq: [2]uint64{1, 2}, blocks: map[int64][]byte{}, states: map[int64]uint64{}, rawEntries: map[int64]uint64{}}
}

func roundUp(n, m int64) int64 { return (n + m - 1) / m * m }

func putHeader(b []byte, seq uint64, logGUID guid, logLength uint32, logOffset uint64) {
	copy(b, "head")
	binary.LittleEndian.PutUint64(b[8:], seq)
	fw := mkGUID(0x11111111, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	copy(b[16:], fw[:])
	dw := mkGUID(0x22222222, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	copy(b[32:], dw[:])
	copy(b[48:], logGUID[:])
	binary.LittleEndian.PutUint16(b[66:], 1)
	binary.LittleEndian.PutUint32(b[68:], logLength)
	binary.LittleEndian.PutUint64(b[72:], logOffset)
	binary.LittleEndian.PutUint32(b[4:], checksum(b[:headerCRCSize], 4))
}

// build returns the file as a sparse set of byte ranges plus its size, so
// that fuzz seeds stay small; bytes() makes it dense.
func (bd *builder) build() (map[int64][]byte, int64) {
	out := map[int64][]byte{}
	id := make([]byte, 520)
	copy(id, "vhdxfile")
	for i, c := range "ferry test" {
		binary.LittleEndian.PutUint16(id[8+2*i:], uint16(c))
	}
	out[0] = id

	logOff := int64(miB)
	logLen := int64(bd.logLength)
	for i, off := range []int64{header1Offset, header2Offset} {
		h := make([]byte, headerCRCSize)
		putHeader(h, bd.seq[i], bd.logGUID, bd.logLength, uint64(logOff))
		out[off] = h
	}
	if len(bd.logData) > 0 {
		out[logOff] = bd.logData
	}

	logical := int64(bd.logical)
	if logical == 0 {
		logical = 512
	}
	bs := int64(bd.blockSize)
	nBlocks := (bd.vsize + bs - 1) / bs
	chunk := int64(sectorsPerChunk) * logical / bs
	var nEntries int64
	if nBlocks > 0 {
		nEntries = nBlocks + (nBlocks-1)/chunk
	}
	batOff := logOff + max(logLen, 0)
	batLen := max(roundUp(nEntries*8, miB), miB)
	metaOff := batOff + batLen
	metaLen := int64(miB)
	dataOff := metaOff + metaLen

	rt := make([]byte, regionTableSize)
	copy(rt, "regi")
	regions := []region{{id: batGUID, offset: uint64(batOff), length: uint32(batLen), required: true},
		{id: metadataGUID, offset: uint64(metaOff), length: uint32(metaLen), required: true}}
	regions = append(regions, bd.extraRegions...)
	binary.LittleEndian.PutUint32(rt[8:], uint32(len(regions)))
	for i, r := range regions {
		e := rt[16+32*i:]
		copy(e, r.id[:])
		binary.LittleEndian.PutUint64(e[16:], r.offset)
		binary.LittleEndian.PutUint32(e[24:], r.length)
		if r.required {
			binary.LittleEndian.PutUint32(e[28:], 1)
		}
	}
	binary.LittleEndian.PutUint32(rt[4:], checksum(rt, 4))
	out[region1Offset] = rt
	out[region2Offset] = rt

	// Metadata table and items.
	mt := make([]byte, metadataTableSize)
	copy(mt, "metadata")
	type item struct {
		id    guid
		flags uint32
		data  []byte
	}
	le32 := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
	le64 := func(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
	p83 := mkGUID(0x83838383, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	items := []item{
		{fileParamsGUID, 4, append(le32(bd.blockSize), le32(bd.flags)...)},
		{virtualSizeGUID, 6, le64(uint64(bd.vsize))},
		{page83GUID, 6, p83[:]},
		{logicalSectGUID, 6, le32(uint32(logical))},
		{physicalSectGUID, 6, le32(bd.physical)},
	}
	for _, x := range bd.extraMeta {
		items = append(items, item(x))
	}
	var kept []item
	for _, it := range items {
		if it.id != bd.skipMeta {
			kept = append(kept, it)
		}
	}
	binary.LittleEndian.PutUint16(mt[10:], uint16(len(kept)))
	var itemData []byte
	for i, it := range kept {
		e := mt[32+32*i:]
		copy(e, it.id[:])
		binary.LittleEndian.PutUint32(e[16:], uint32(metadataTableSize+len(itemData)))
		binary.LittleEndian.PutUint32(e[20:], uint32(len(it.data)))
		binary.LittleEndian.PutUint32(e[24:], it.flags)
		itemData = append(itemData, it.data...)
	}
	out[metaOff] = mt
	out[metaOff+metadataTableSize] = itemData

	// BAT and blocks.
	bat := make([]byte, nEntries*8)
	var keys []int64
	for k := range bd.blocks {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	next := dataOff
	entry := func(blk int64) []byte { return bat[(blk+blk/chunk)*8:] }
	for blk, st := range bd.states {
		binary.LittleEndian.PutUint64(entry(blk), st)
	}
	for _, blk := range keys {
		binary.LittleEndian.PutUint64(entry(blk), uint64(next)|stateFullyPresent)
		out[next] = bd.blocks[blk]
		next += bs
	}
	for blk, e := range bd.rawEntries {
		binary.LittleEndian.PutUint64(entry(blk), e)
	}
	out[batOff] = bat

	size := max(next, dataOff)
	if bd.fileSize != 0 {
		size = bd.fileSize
	}
	return out, size
}

func (bd *builder) bytes() []byte {
	parts, size := bd.build()
	b := make([]byte, size)
	for off, p := range parts {
		if off < size {
			copy(b[off:], p)
		}
	}
	return b
}

func (bd *builder) write(t testing.TB, path string) string {
	t.Helper()
	if err := os.WriteFile(path, bd.bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// logEntry builds one log entry with data descriptors writing 4 KiB of
// fill at each file offset, with a valid checksum.
func logEntry(logGUID guid, seq uint64, offsets []uint64, fill byte) []byte {
	n := len(offsets)
	descSectors := (n + 2 + 127) / 128
	total := descSectors + n
	b := make([]byte, total*logSectorSize)
	copy(b, "loge")
	binary.LittleEndian.PutUint32(b[8:], uint32(len(b)))
	binary.LittleEndian.PutUint64(b[16:], seq)
	binary.LittleEndian.PutUint32(b[24:], uint32(n))
	copy(b[32:], logGUID[:])
	binary.LittleEndian.PutUint64(b[48:], 16*miB)
	binary.LittleEndian.PutUint64(b[56:], 16*miB)
	for i, off := range offsets {
		d := b[logHeaderSize+logDescSize*i:]
		copy(d, "desc")
		binary.LittleEndian.PutUint64(d[16:], off)
		binary.LittleEndian.PutUint64(d[24:], seq)
		s := b[(descSectors+i)*logSectorSize:][:logSectorSize]
		for j := range s {
			s[j] = fill
		}
		copy(s, "data")
		binary.LittleEndian.PutUint32(s[4:], uint32(seq>>32))
		binary.LittleEndian.PutUint32(s[4092:], uint32(seq))
	}
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b, castagnoli))
	return b
}

// Patching helpers for images made by qemu-img.

func fixHeaderCRC(b []byte, off int64) {
	h := b[off : off+headerCRCSize]
	binary.LittleEndian.PutUint32(h[4:], checksum(h, 4))
}

func fixRegionCRC(b []byte, off int64) {
	r := b[off : off+regionTableSize]
	binary.LittleEndian.PutUint32(r[4:], checksum(r, 4))
}

// activeHeader returns the offset of the header with the higher sequence.
func activeHeader(b []byte) int64 {
	if binary.LittleEndian.Uint64(b[header1Offset+8:]) > binary.LittleEndian.Uint64(b[header2Offset+8:]) {
		return header1Offset
	}
	return header2Offset
}

// regionOffset returns the file offset of a region of a well-formed image.
func regionOffset(b []byte, id guid) int64 {
	rt := b[region1Offset:]
	n := int(binary.LittleEndian.Uint32(rt[8:]))
	for i := 0; i < n; i++ {
		e := rt[16+32*i:]
		if guid(e[:16]) == id {
			return int64(binary.LittleEndian.Uint64(e[16:]))
		}
	}
	panic("region not found")
}

// metaItemOffset returns the file offset of a metadata item's data.
func metaItemOffset(b []byte, id guid) int64 {
	m := regionOffset(b, metadataGUID)
	n := int(binary.LittleEndian.Uint16(b[m+10:]))
	for i := 0; i < n; i++ {
		e := b[m+32+32*int64(i):]
		if guid(e[:16]) == id {
			return m + int64(binary.LittleEndian.Uint32(e[16:]))
		}
	}
	panic("metadata item not found")
}

// metaEntry returns the offset of a metadata table entry.
func metaEntry(b []byte, id guid) int64 {
	m := regionOffset(b, metadataGUID)
	n := int(binary.LittleEndian.Uint16(b[m+10:]))
	for i := 0; i < n; i++ {
		e := m + 32 + 32*int64(i)
		if guid(b[e:e+16]) == id {
			return e
		}
	}
	panic("metadata entry not found")
}
