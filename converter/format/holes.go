package format

import "os"

// Holes finds the holes of a local sparse file with SEEK_DATA/SEEK_HOLE, so
// readers report them as zero extents and they are never read nor written
// (qemu does the same through its file layer). For anything but a local
// file everything is data.
type Holes struct {
	f *os.File
}

// HolesOf returns the hole finder for f.
func HolesOf(f any) Holes {
	switch v := f.(type) {
	case *OSFile:
		return Holes{f: v.File}
	case *os.File:
		return Holes{f: v}
	case interface{ OSFile() *os.File }:
		return Holes{f: v.OSFile()}
	}
	return Holes{}
}

// Probe reports whether file offset off is in a hole and how far (at most
// n bytes) that stays true. lseek moves the file offset, which ReadAt
// (pread) does not use, so concurrent probes are safe.
func (h Holes) Probe(off, n int64) (hole bool, length int64) {
	if h.f == nil {
		return false, n
	}
	data, err := h.f.Seek(off, seekData)
	if err != nil {
		// ENXIO: no data after off. Other errors (no SEEK_DATA
		// support): all data.
		return isENXIO(err), n
	}
	if data > off {
		return true, min(n, data-off)
	}
	end, err := h.f.Seek(off, seekHole)
	if err != nil || end <= off {
		return false, n
	}
	return false, min(n, end-off)
}
