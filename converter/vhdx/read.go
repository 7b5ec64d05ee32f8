package vhdx

import (
	"errors"
	"fmt"
	"io"

	"github.com/hikube/ferry/converter/format"
)

var (
	_ format.Image     = (*Image)(nil)
	_ format.Inspector = (*Image)(nil)
)

// ReadAt reads the virtual disk. Runs of FULLY_PRESENT blocks that follow
// each other in the file are read with one call on the file.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("vhdx: negative offset")
	}
	if off >= img.size {
		return 0, io.EOF
	}
	want := len(p)
	if rem := img.size - off; int64(want) > rem {
		want = int(rem)
	}
	mask := img.blockSize - 1
	for done := 0; done < want; {
		pos := off + int64(done)
		blk := pos >> img.blockBits
		n := int(min(int64(want-done), img.blockSize-pos&mask))
		e := img.bat[blk]
		if e == 0 {
			clear(p[done : done+n])
			done += n
			continue
		}
		host := int64(e)<<20 + pos&mask
		end := done + n
		for next := blk + 1; end < want && img.bat[next] != 0 && int64(img.bat[next])<<20 == host+int64(end-done); next++ {
			end += int(min(int64(want-end), img.blockSize))
		}
		// Open checked that every block's data up to the virtual size is
		// inside the file, so a short read means the file changed.
		m, err := img.f.ReadAt(p[done:end], host)
		if m < end-done {
			if err == nil || err == io.EOF {
				err = format.Corruptf("vhdx: short read of block %d at file offset %d: file ended early", blk, host+int64(m))
			}
			return done + m, fmt.Errorf("vhdx: read block %d: %w", blk, err)
		}
		done = end
	}
	if want < len(p) {
		return want, io.EOF
	}
	return want, nil
}

// Extent returns the run starting at start of blocks with the same
// status, from the in-memory BAT only.
func (img *Image) Extent(start, length int64) (format.Extent, error) {
	if start < 0 || length <= 0 || start >= img.size || length > img.size-start {
		return format.Extent{}, fmt.Errorf("vhdx: extent %d+%d out of range (size %d)", start, length, img.size)
	}
	limit := start + length
	blk := start >> img.blockBits
	data := img.bat[blk] != 0
	end := min((blk+1)<<img.blockBits, limit)
	for blk++; end < limit && (img.bat[blk] != 0) == data; blk++ {
		end = min(end+img.blockSize, limit)
	}
	return format.Extent{Start: start, Length: end - start, Allocated: data, Zero: !data}, nil
}

// Size is the virtual disk size.
func (img *Image) Size() int64 { return img.size }

// Type is "vhdx".
func (img *Image) Type() format.Type { return Type }

// Readable reports nothing: Open refuses what this reader cannot read.
func (img *Image) Readable() error { return nil }

// Close closes the file.
func (img *Image) Close() error { return img.f.Close() }

// Info describes the image like `qemu-img info`.
func (img *Image) Info() format.Info {
	sub := "dynamic"
	if img.fixed {
		sub = "fixed"
	}
	return format.Info{
		Format:         Type,
		Subformat:      sub,
		VirtualSize:    img.size,
		FileSize:       img.fileSize,
		AllocatedBytes: img.allocated,
		ClusterSize:    img.blockSize,
		Details: map[string]any{
			"logical_sector_size":    img.logical,
			"physical_sector_size":   img.physical,
			"block_size":             img.blockSize,
			"header_sequence_number": img.hdr.seq,
			"creator":                img.creator,
			"has_parent":             false,
			"leave_blocks_allocated": img.fixed,
			"page83":                 img.page83.String(),
			"data_write_guid":        img.hdr.dataWriteGUID.String(),
			"log_size":               img.hdr.logLength,
			"blocks_fully_present":   img.states[stateFullyPresent],
			"blocks_zero":            img.states[stateZero],
			"blocks_not_present":     img.states[stateNotPresent] + img.states[stateUndefined] + img.states[stateUnmapped] + img.states[stateUnmappedV095],
		},
	}
}
