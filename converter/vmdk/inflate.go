package vmdk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/flate"

	"github.com/hikube/ferry/converter/format"
)

// Grain decompression. format.InflateZlib stops when dst is full: it cannot
// tell a grain that inflates to more than a grain from a good one, and never
// reaches the adler32 check. qemu's uncompress() refuses both, so grains use
// this stricter inflater: the zlib framing is parsed here, around a pooled
// raw-deflate reader, so that the checksum is the fast adler32Update.

type grainInflater struct {
	src     bytes.Reader
	fr      io.ReadCloser // implements flate.Resetter
	scratch []byte
}

var grainInflaters = sync.Pool{New: func() any { return new(grainInflater) }}

// inflateGrain decompresses the zlib stream in src into dst. The stream must
// produce at least len(dst) bytes, at most max bytes in all, and end with a
// valid checksum; bytes after the checksum are ignored (grains are padded to
// sectors).
func inflateGrain(dst []byte, max int, src []byte) error {
	if format.Inflater == "libdeflate" && len(dst) == max {
		// libdeflate checks the adler32 and refuses output beyond dst
		// itself, ~3x faster than the path below.
		n, err := format.InflateZlib(dst, src)
		if err != nil {
			return fmt.Errorf("compressed grain: %w", err)
		}
		if n < len(dst) {
			return format.Corruptf("compressed grain inflates to %d bytes, expected at least %d", n, len(dst))
		}
		return nil
	}
	if len(src) < 2 {
		return format.Corruptf("compressed grain of %d bytes", len(src))
	}
	cmf, flg := src[0], src[1]
	if cmf&0x0f != 8 || cmf>>4 > 7 || (uint16(cmf)<<8|uint16(flg))%31 != 0 {
		return format.Corruptf("compressed grain: bad zlib header %02x%02x", cmf, flg)
	}
	if flg&0x20 != 0 {
		return format.Corruptf("compressed grain: zlib stream needs a preset dictionary")
	}
	in := grainInflaters.Get().(*grainInflater)
	defer grainInflaters.Put(in)
	in.src.Reset(src[2:])
	if in.fr == nil {
		in.fr = flate.NewReader(&in.src)
	} else if err := in.fr.(flate.Resetter).Reset(&in.src, nil); err != nil {
		return format.Corruptf("compressed grain: %v", err)
	}
	n, err := io.ReadFull(in.fr, dst)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return format.Corruptf("compressed grain inflates to %d bytes, expected at least %d", n, len(dst))
		}
		return format.Corruptf("compressed grain: %v", err)
	}
	sum := adler32Update(1, dst)
	// Whatever follows (only a grain read in part stops short of the
	// grain size) counts for the checksum and may not exceed max.
	rest := max - len(dst)
	if in.scratch == nil {
		in.scratch = make([]byte, 32<<10)
	}
	for {
		m, err := in.fr.Read(in.scratch)
		if rest -= m; rest < 0 {
			return format.Corruptf("compressed grain inflates to more than %d bytes", max)
		}
		sum = adler32Update(sum, in.scratch[:m])
		if err == io.EOF {
			break
		}
		if err != nil {
			return format.Corruptf("compressed grain: %v", err)
		}
	}
	// The flate reader consumes exactly the deflate stream from a
	// ByteReader, so the adler32 follows.
	var want [4]byte
	if _, err := io.ReadFull(&in.src, want[:]); err != nil {
		return format.Corruptf("compressed grain: zlib checksum missing")
	}
	if got := binary.BigEndian.Uint32(want[:]); got != sum {
		return format.Corruptf("compressed grain: zlib checksum %08x, data gives %08x", got, sum)
	}
	return nil
}
