package vhd

import (
	"errors"
	"fmt"
	"io"

	"github.com/hikube/ferry/converter/format"
)

// ReadAt reads the virtual disk. It is safe for concurrent use.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("vpc: negative offset %d", off)
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
	var err error
	if img.ft.diskType == diskFixed {
		err = img.readFile(p[:want], off)
	} else {
		err = img.readDynamic(p[:want], off)
	}
	if err != nil {
		return 0, err
	}
	if want < len(p) {
		return want, io.EOF
	}
	return want, nil
}

// readFile reads the file at off into b, zeros past its end: what qemu
// returns for a fixed image whose geometry is larger than its data.
func (img *Image) readFile(b []byte, off int64) error {
	n := 0
	if off < img.fileSize {
		n = int(min(int64(len(b)), img.fileSize-off))
		if err := readFull(img.f, b[:n], off); err != nil {
			return err
		}
	}
	clear(b[n:])
	return nil
}

// readDynamic reads b at virtual offset off of a dynamic or differencing
// image, one file read per allocated block (a sector bitmap separates the
// data of consecutive blocks, so they are never contiguous in the file).
func (img *Image) readDynamic(b []byte, off int64) error {
	bs := img.blockSize
	for len(b) > 0 {
		bi := off / bs
		n := int(min(int64(len(b)), (bi+1)*bs-off))
		e := img.bat[bi]
		if e == batUnallocated {
			// Take the whole run of unallocated blocks at once.
			for n < len(b) && img.bat[(off+int64(n))/bs] == batUnallocated {
				n = min(len(b), n+int(bs))
			}
			if err := img.readParent(b[:n], off); err != nil {
				return err
			}
		} else {
			blockData := int64(e)*sectorSize + img.bitmapSize
			if img.parent == nil {
				if err := readFull(img.f, b[:n], blockData+off-bi*bs); err != nil {
					return err
				}
			} else if err := img.readDiffBlock(b[:n], off, bi, int64(e)*sectorSize); err != nil {
				return err
			}
		}
		b = b[n:]
		off += int64(n)
	}
	return nil
}

// readParent fills b with the parent's data at off (zeros without a parent
// or past the parent's end).
func (img *Image) readParent(b []byte, off int64) error {
	if img.parent == nil {
		clear(b)
		return nil
	}
	n := 0
	if ps := img.parent.Size(); off < ps {
		n = int(min(int64(len(b)), ps-off))
		m, err := img.parent.ReadAt(b[:n], off)
		if m != n {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("vpc: parent %s at %d: %w", img.parentRef, off, err)
		}
	}
	clear(b[n:])
	return nil
}

// readDiffBlock reads b at off inside allocated block bi (bitmap at
// bitmapOff) of a differencing image: runs of sectors whose bitmap bit is
// set come from this file in one read each, the others from the parent.
func (img *Image) readDiffBlock(b []byte, off, bi, bitmapOff int64) error {
	bm, err := img.bitmap(bi, bitmapOff)
	if err != nil {
		return err
	}
	blockStart := bi * img.blockSize
	dataOff := bitmapOff + img.bitmapSize
	end := off + int64(len(b))
	for off < end {
		set, runEnd := bitRun(bm, (off-blockStart)/sectorSize, (end-blockStart+sectorSize-1)/sectorSize)
		runEnd = min(end, blockStart+runEnd*sectorSize)
		n := runEnd - off
		if set {
			err = readFull(img.f, b[:n], dataOff+off-blockStart)
		} else {
			err = img.readParent(b[:n], off)
		}
		if err != nil {
			return err
		}
		b = b[n:]
		off = runEnd
	}
	return nil
}

// bitRun returns the value of bit s of the sector bitmap (most significant
// bit first, as Virtual PC writes it) and the first sector after s, at most
// limit, whose bit differs.
func bitRun(bm []byte, s, limit int64) (bool, int64) {
	bit := func(i int64) bool { return bm[i>>3]&(0x80>>(i&7)) != 0 }
	v := bit(s)
	full := byte(0)
	if v {
		full = 0xff
	}
	i := s + 1
	for i < limit {
		if i&7 == 0 && i+8 <= limit && bm[i>>3] == full {
			i += 8
			continue
		}
		if bit(i) != v {
			break
		}
		i++
	}
	return v, i
}

// Extent reports the status of the run starting at start: allocated blocks
// are data, except holes of the file inside them, unallocated ones zero
// (or the parent's status in a differencing image). It reads no data, and
// only sector bitmaps of differencing images.
func (img *Image) Extent(start, length int64) (format.Extent, error) {
	if start < 0 || length <= 0 || start > img.size-length {
		return format.Extent{}, fmt.Errorf("vpc: extent %d+%d out of range (size %d)", start, length, img.size)
	}
	end := start + length
	var cur format.Extent
	for pos := start; pos < end; {
		var e format.Extent
		var err error
		switch {
		case img.ft.diskType == diskFixed:
			e = img.fixedExtent(pos, end-pos)
		case img.parent != nil:
			e, err = img.diffExtent(pos, end)
		default:
			e = img.dynamicExtent(pos, end)
		}
		if err != nil {
			return format.Extent{}, err
		}
		if cur.Length == 0 {
			cur = e
		} else if sameStatus(cur, e) {
			cur.Length += e.Length
		} else {
			break
		}
		pos += e.Length
	}
	return cur, nil
}

// dynamicExtent returns one piece of a dynamic image starting at pos: a run
// of unallocated blocks, or a run of data or hole inside one allocated
// block.
func (img *Image) dynamicExtent(pos, end int64) format.Extent {
	bs := img.blockSize
	bi := pos / bs
	e := img.bat[bi]
	blockEnd := (bi + 1) * bs
	if e == batUnallocated {
		for blockEnd < end && img.bat[blockEnd/bs] == batUnallocated {
			blockEnd += bs
		}
		return format.Extent{Start: pos, Length: min(end, blockEnd) - pos, Zero: true}
	}
	host := int64(e)*sectorSize + img.bitmapSize + pos - bi*bs
	hole, n := img.holes.Probe(host, min(end, blockEnd)-pos)
	return format.Extent{Start: pos, Length: n, Allocated: true, Zero: hole}
}

func sameStatus(a, b format.Extent) bool {
	return a.Allocated == b.Allocated && a.Zero == b.Zero && a.Compressed == b.Compressed
}

// diffExtent returns one piece of a differencing image starting at pos: a
// run of unallocated blocks or of sectors with the same bitmap bit.
func (img *Image) diffExtent(pos, end int64) (format.Extent, error) {
	bs := img.blockSize
	bi := pos / bs
	e := img.bat[bi]
	if e == batUnallocated {
		runEnd := (bi + 1) * bs
		for runEnd < end && img.bat[runEnd/bs] == batUnallocated {
			runEnd += bs
		}
		return img.parentExtent(pos, min(end, runEnd))
	}
	bm, err := img.bitmap(bi, int64(e)*sectorSize)
	if err != nil {
		return format.Extent{}, err
	}
	blockStart := bi * bs
	blockEnd := min(end, blockStart+bs)
	set, runEnd := bitRun(bm, (pos-blockStart)/sectorSize, (blockEnd-blockStart+sectorSize-1)/sectorSize)
	runEnd = min(blockEnd, blockStart+runEnd*sectorSize)
	if set {
		return format.Extent{Start: pos, Length: runEnd - pos, Allocated: true}, nil
	}
	return img.parentExtent(pos, runEnd)
}

// parentExtent is the parent's status at pos, at most up to end; past the
// parent's end the disk reads as zeros.
func (img *Image) parentExtent(pos, end int64) (format.Extent, error) {
	ps := img.parent.Size()
	if pos >= ps {
		return format.Extent{Start: pos, Length: end - pos, Zero: true}, nil
	}
	e, err := img.parent.Extent(pos, min(end, ps)-pos)
	if err != nil {
		return e, fmt.Errorf("vpc: parent %s: %w", img.parentRef, err)
	}
	if e.Start != pos || e.Length <= 0 || e.Length > min(end, ps)-pos {
		return e, fmt.Errorf("vpc: parent %s: Extent(%d) returned %+v", img.parentRef, pos, e)
	}
	return e, nil
}

// fixedExtent maps the file: data where the file has data, holes of a
// sparse local file and anything past its end as zeros.
func (img *Image) fixedExtent(start, length int64) format.Extent {
	if start >= img.fileSize {
		return format.Extent{Start: start, Length: length, Zero: true}
	}
	hole, n := img.holes.Probe(start, min(length, img.fileSize-start))
	return format.Extent{Start: start, Length: n, Allocated: !hole, Zero: hole}
}
