package format

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"
)

// Decompression of clusters and grains. Readers are pooled and reset, never
// created per cluster: a new inflater per 64 KiB cluster costs about a third
// of the decompression time.

type inflater struct {
	src bytes.Reader
	fr  io.ReadCloser // flate reader, implements flate.Resetter
	zr  io.ReadCloser // zlib reader, implements zlib.Resetter
}

var inflaters = sync.Pool{New: func() any { return new(inflater) }}

// InflateRaw decompresses raw deflate data (qcow2 compressed clusters) from
// src into dst and returns the number of bytes written. It fills dst
// completely unless the stream ends first; trailing bytes in src after the
// end of the stream are ignored (qcow2 rounds compressed sizes up to
// sectors).
func InflateRaw(dst, src []byte) (int, error) { return inflate(kindRaw, dst, src) }

// InflateZlib decompresses zlib-wrapped deflate data (VMDK grains).
func InflateZlib(dst, src []byte) (int, error) { return inflate(kindZlib, dst, src) }

func goInflateRaw(dst, src []byte) (int, error) {
	in := inflaters.Get().(*inflater)
	defer inflaters.Put(in)
	in.src.Reset(src)
	if in.fr == nil {
		in.fr = flate.NewReader(&in.src)
	} else if err := in.fr.(flate.Resetter).Reset(&in.src, nil); err != nil {
		return 0, err
	}
	return readFull(in.fr, dst)
}

func goInflateZlib(dst, src []byte) (int, error) {
	in := inflaters.Get().(*inflater)
	defer inflaters.Put(in)
	in.src.Reset(src)
	var err error
	if in.zr == nil {
		in.zr, err = zlib.NewReader(&in.src)
	} else {
		err = in.zr.(zlib.Resetter).Reset(&in.src, nil)
	}
	if err != nil {
		return 0, fmt.Errorf("%w: zlib header: %v", ErrCorrupt, err)
	}
	return readFull(in.zr, dst)
}

func readFull(r io.Reader, dst []byte) (int, error) {
	n, err := io.ReadFull(r, dst)
	if err == io.ErrUnexpectedEOF || err == io.EOF {
		return n, nil // short stream: caller checks n against what it expects
	}
	if err != nil {
		return n, fmt.Errorf("%w: inflate: %v", ErrCorrupt, err)
	}
	return n, nil
}

var (
	zstdOnce sync.Once
	zstdDec  *zstd.Decoder
)

// DecodeZstd decompresses one zstd frame (qcow2 compression_type=zstd) into
// dst and returns the bytes written. qemu packs compressed clusters back to
// back, so src (rounded to sectors) may hold the start of the next frame:
// only the first frame is decoded. The shared decoder's DecodeAll is safe
// for concurrent use.
func DecodeZstd(dst, src []byte) (int, error) {
	zstdOnce.Do(func() {
		zstdDec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderLowmem(false),
			// A cluster is at most 2 MiB: refuse frames claiming more.
			zstd.WithDecoderMaxMemory(16<<20), zstd.WithDecoderMaxWindow(16<<20))
	})
	if n := firstZstdFrame(src); n > 0 {
		src = src[:n]
	}
	// Capacity == length: a frame larger than dst makes DecodeAll
	// allocate instead of writing past dst into the caller's buffer.
	out, err := zstdDec.DecodeAll(src, dst[:0:len(dst)])
	if err != nil {
		return 0, fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
	}
	if len(out) > len(dst) || (len(out) > 0 && &out[0] != &dst[0]) {
		return 0, fmt.Errorf("%w: zstd frame decompresses to more than %d bytes", ErrCorrupt, len(dst))
	}
	return len(out), nil
}

// firstZstdFrame returns the length of the first zstd frame in src, or 0.
func firstZstdFrame(src []byte) int {
	var h zstd.Header
	if err := h.Decode(src); err != nil {
		return 0
	}
	// Walk blocks: 3-byte block headers after the frame header.
	pos := h.HeaderSize
	for pos+3 <= len(src) {
		bh := uint32(src[pos]) | uint32(src[pos+1])<<8 | uint32(src[pos+2])<<16
		last := bh&1 == 1
		btype := (bh >> 1) & 3
		bsize := int(bh >> 3)
		pos += 3
		switch btype {
		case 1: // RLE: one byte
			pos++
		case 3:
			return 0
		default:
			pos += bsize
		}
		if last {
			if h.HasCheckSum {
				pos += 4
			}
			if pos > len(src) {
				return 0
			}
			return pos
		}
	}
	return 0
}
