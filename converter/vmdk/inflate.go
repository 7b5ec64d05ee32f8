package vmdk

import (
	"bytes"
	"errors"
	"io"
	"sync"

	"github.com/klauspost/compress/zlib"

	"github.com/hikube/ferry/converter/format"
)

// Grain decompression. format.InflateZlib stops when dst is full and cannot
// tell a grain that inflates to more than a grain from a good one, nor does
// it reach the adler32 check. qemu's uncompress() refuses both, so grains
// use this stricter, equally pooled, inflater.

type grainInflater struct {
	src bytes.Reader
	zr  io.ReadCloser // implements zlib.Resetter
}

var grainInflaters = sync.Pool{New: func() any { return new(grainInflater) }}

// inflateGrain decompresses the zlib stream in src into dst. The stream must
// produce at least len(dst) bytes, at most max bytes in all, and end with a
// valid checksum; bytes after the end of the stream in src are ignored
// (grains are padded to sectors).
func inflateGrain(dst []byte, max int, src []byte) error {
	in := grainInflaters.Get().(*grainInflater)
	defer grainInflaters.Put(in)
	in.src.Reset(src)
	var err error
	if in.zr == nil {
		in.zr, err = zlib.NewReader(&in.src)
	} else {
		err = in.zr.(zlib.Resetter).Reset(&in.src, nil)
	}
	if err != nil {
		return format.Corruptf("compressed grain: zlib header: %v", err)
	}
	n, err := io.ReadFull(in.zr, dst)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return format.Corruptf("compressed grain inflates to %d bytes, expected at least %d", n, len(dst))
		}
		return format.Corruptf("compressed grain: %v", err)
	}
	// Drain what may legitimately follow (a grain shorter than dst is
	// impossible here; a longer one only up to max), then insist on the end
	// of the stream, which also verifies the adler32 checksum.
	rest := int64(max - len(dst))
	m, err := io.CopyN(io.Discard, in.zr, rest+1)
	switch {
	case m > rest:
		return format.Corruptf("compressed grain inflates to more than %d bytes", max)
	case err != nil && err != io.EOF:
		return format.Corruptf("compressed grain: %v", err)
	}
	return nil
}
