// Package formattest holds what the format readers' tests share: an
// in-memory file and the contract check their fuzz targets run on every
// image that opens.
package formattest

import (
	"bytes"
	"io"
	"testing"

	"github.com/hikube/ferry/converter/format"
)

// MemFile is an in-memory format.File.
type MemFile struct {
	*bytes.Reader
	Path string
}

// NewMemFile returns b as a file named path.
func NewMemFile(path string, b []byte) MemFile { return MemFile{bytes.NewReader(b), path} }

func (m MemFile) Name() string { return m.Path }
func (m MemFile) Close() error { return nil }

// maxRead is the largest virtual size Check reads in full; beyond, it maps
// a few extents and reads the ends: reading petabytes proves nothing.
const maxRead = 64 << 20

// buf is reused by every call: a fuzz worker runs one input at a time, and
// allocating it each time makes minimization (thousands of runs) slow.
var buf = make([]byte, 1<<20+123)

// Check exercises an image opened from untrusted bytes: Info; a size that
// is not negative; an extent map that tiles the disk; reads of all of a
// small disk that return what was asked unless they fail; zero extents
// that read as zeros. Strict formats validate all their metadata at open,
// so their later Extent and ReadAt calls must not fail either; others may
// find corruption late and fail then, cleanly.
func Check(t testing.TB, img format.Image, strict bool) {
	t.Helper()
	if in, ok := img.(format.Inspector); ok {
		_ = in.Info()
	}
	size := img.Size()
	if size < 0 {
		t.Fatalf("negative size %d", size)
	}
	failed := func(what string, off int64, err error) bool {
		t.Helper()
		if err == nil || err == io.EOF {
			return false
		}
		if strict {
			t.Fatalf("%s(%d): %v", what, off, err)
		}
		return true
	}
	if size > maxRead {
		for off, i := int64(0), 0; off < size && i < 16; i++ {
			e, err := img.Extent(off, size-off)
			if failed("Extent", off, err) {
				break
			}
			if e.Start != off || e.Length <= 0 || e.Length > size-off {
				t.Fatalf("Extent(%d) = %+v", off, e)
			}
			off += e.Length
		}
		// Its ends: without a panic, whatever the outcome.
		b := buf[:1<<20]
		img.ReadAt(b, 0)
		img.ReadAt(b, size-int64(len(b)))
		return
	}
	// Everything, in odd-sized reads that cross extent boundaries.
	for off := int64(0); off < size; off += int64(len(buf)) {
		n, err := img.ReadAt(buf, off)
		if failed("ReadAt", off, err) {
			break
		}
		if want := min(int64(len(buf)), size-off); int64(n) != want {
			t.Fatalf("ReadAt(%d) = %d bytes, want %d", off, n, want)
		}
	}
	// The map tiles the disk, and its zero runs read as zeros (their
	// heads: clearing megabytes of zeros would spend the fuzzing time).
	for off := int64(0); off < size; {
		e, err := img.Extent(off, size-off)
		if failed("Extent", off, err) {
			break
		}
		if e.Start != off || e.Length <= 0 || e.Length > size-off {
			t.Fatalf("Extent(%d) = %+v", off, e)
		}
		if e.Zero {
			b := buf[:min(e.Length, 4096)]
			n, err := img.ReadAt(b, off)
			if !failed("ReadAt", off, err) && (n != len(b) || !allZero(b)) {
				t.Fatalf("zero extent %+v reads data (%d bytes)", e, n)
			}
		}
		off += e.Length
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
