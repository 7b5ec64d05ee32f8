//go:build cgo && libdeflate

package format

// libdeflate inflates 2-3x faster than compress/flate: with it, zlib
// qcow2 images and streamOptimized VMDKs are bound by the disk rather than
// by decompression. Built with -tags libdeflate (make build does when
// libdeflate-dev is installed); the pure-Go path is used otherwise.

/*
#cgo LDFLAGS: -ldeflate
#include <libdeflate.h>
*/
import "C"

import (
	"fmt"
	"sync"
	"unsafe"
)

// Inflater names the decompression implementation in use.
const Inflater = "libdeflate"

var decompressors = sync.Pool{New: func() any {
	d := C.libdeflate_alloc_decompressor()
	if d == nil {
		panic("libdeflate: out of memory")
	}
	return d
}}

type deflateKind int

const (
	kindRaw deflateKind = iota
	kindZlib
)

func inflate(kind deflateKind, dst, src []byte) (int, error) {
	if len(dst) == 0 {
		return 0, nil
	}
	if len(src) == 0 {
		return 0, fmt.Errorf("%w: inflate: empty input", ErrCorrupt)
	}
	d := decompressors.Get().(*C.struct_libdeflate_decompressor)
	defer decompressors.Put(d)
	var in, out C.size_t
	var r C.enum_libdeflate_result
	switch kind {
	case kindRaw:
		r = C.libdeflate_deflate_decompress_ex(d, unsafe.Pointer(&src[0]), C.size_t(len(src)),
			unsafe.Pointer(&dst[0]), C.size_t(len(dst)), &in, &out)
	default:
		r = C.libdeflate_zlib_decompress_ex(d, unsafe.Pointer(&src[0]), C.size_t(len(src)),
			unsafe.Pointer(&dst[0]), C.size_t(len(dst)), &in, &out)
	}
	switch r {
	case C.LIBDEFLATE_SUCCESS:
		return int(out), nil
	case C.LIBDEFLATE_INSUFFICIENT_SPACE:
		return 0, fmt.Errorf("%w: inflate: data decompresses to more than %d bytes", ErrCorrupt, len(dst))
	default:
		return 0, fmt.Errorf("%w: inflate: bad deflate data (libdeflate result %d)", ErrCorrupt, int(r))
	}
}
