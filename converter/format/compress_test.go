package format

import (
	"bytes"
	"compress/flate"
	"compress/zlib"
	"errors"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func TestDecompressors(t *testing.T) {
	plain := bytes.Repeat([]byte("ferry cluster "), 5000)
	var rawDeflate, zl bytes.Buffer
	fw, _ := flate.NewWriter(&rawDeflate, 6)
	fw.Write(plain)
	fw.Close()
	zw := zlib.NewWriter(&zl)
	zw.Write(plain)
	zw.Close()
	enc, _ := zstd.NewWriter(nil)
	zs := enc.EncodeAll(plain, nil)
	// qemu packs clusters back to back: the next frame's start follows.
	zsPadded := append(append([]byte(nil), zs...), enc.EncodeAll([]byte("next cluster"), nil)[:7]...)

	cases := []struct {
		name string
		fn   func(dst, src []byte) (int, error)
		src  []byte
	}{
		{"raw-deflate", InflateRaw, append(rawDeflate.Bytes(), 0, 0, 0)}, // sector padding
		{"zlib", InflateZlib, zl.Bytes()},
		{"zstd", DecodeZstd, zs},
		{"zstd-next-frame-follows", DecodeZstd, zsPadded},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for i := 0; i < 3; i++ { // pooled state is reset between uses
				dst := make([]byte, len(plain))
				n, err := c.fn(dst, c.src)
				if err != nil || n != len(plain) || !bytes.Equal(dst, plain) {
					t.Fatalf("n=%d err=%v", n, err)
				}
			}
			// A destination too small is never overrun.
			big := make([]byte, len(plain))
			small := big[:len(plain)/2]
			n, err := c.fn(small, c.src)
			if err == nil && n > len(small) {
				t.Fatalf("wrote %d bytes into %d", n, len(small))
			}
			if tail := big[len(plain)/2:]; !bytes.Equal(tail, make([]byte, len(tail))) {
				t.Fatal("decompressor wrote past the destination's length")
			}
			// Garbage is ErrCorrupt, not a panic.
			if _, err := c.fn(make([]byte, 100), []byte("\xff\xfe garbage garbage")); err == nil {
				t.Log("garbage decoded without error (acceptable only if short)")
			} else if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("garbage: %v, want ErrCorrupt", err)
			}
		})
	}
}
