package importer

import (
	"bytes"
	"compress/bzip2"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Wrapper is a compression format around an image.
type Wrapper string

const (
	None  Wrapper = ""
	Gzip  Wrapper = "gzip"
	XZ    Wrapper = "xz"
	Zstd  Wrapper = "zstd"
	Bzip2 Wrapper = "bzip2"
)

// SniffLen is how many leading bytes SniffWrapper needs.
const SniffLen = 10

// SniffWrapper detects a compression wrapper by content (never by file
// name) from the first SniffLen bytes.
func SniffWrapper(head []byte) Wrapper {
	switch {
	case len(head) >= 3 && head[0] == 0x1f && head[1] == 0x8b && head[2] == 8: // deflate
		return Gzip
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return XZ
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return Zstd
	case len(head) >= 10 && head[0] == 'B' && head[1] == 'Z' && head[2] == 'h' && head[3] >= '1' && head[3] <= '9' &&
		(bytes.Equal(head[4:10], []byte{0x31, 0x41, 0x59, 0x26, 0x53, 0x59}) || // block magic (pi)
			bytes.Equal(head[4:10], []byte{0x17, 0x72, 0x45, 0x38, 0x50, 0x90})): // end of stream (sqrt pi): empty
		return Bzip2
	}
	return None
}

// maxZstdWindow bounds zstd's window (memory); default levels use 8 MiB,
// --long=27 128 MiB.
const maxZstdWindow = 128 << 20

// Decompress returns a reader of r decompressed, pure Go. Concatenated
// streams (pigz, pbzip2, pixz) are read through.
func Decompress(r io.Reader, w Wrapper) (io.ReadCloser, error) {
	switch w {
	case None:
		return io.NopCloser(r), nil
	case Gzip:
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, nil
	case XZ:
		zr, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		return io.NopCloser(zr), nil
	case Zstd:
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(2), zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return zstdCloser{zr}, nil
	case Bzip2:
		return io.NopCloser(bzip2.NewReader(r)), nil
	}
	return nil, fmt.Errorf("unknown wrapper %q", w)
}

type zstdCloser struct{ *zstd.Decoder }

func (z zstdCloser) Close() error {
	z.Decoder.Close()
	return nil
}
