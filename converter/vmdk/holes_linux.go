package vmdk

import (
	"errors"
	"syscall"
)

// Linux lseek whences for sparse files.
const (
	seekData = 3
	seekHole = 4
)

// holeRun reports, for a flat extent file, whether off is in a hole and how
// far the hole or data run goes (at most max). Files that cannot seek, or
// file systems that do not say, read as data. qemu reports holes of flat
// extents the same way (through the file's block status).
func holeRun(f any, off, max int64) (hole bool, n int64) {
	s, ok := f.(interface {
		Seek(offset int64, whence int) (int64, error)
	})
	if !ok {
		return false, max
	}
	d, err := s.Seek(off, seekData)
	switch {
	case errors.Is(err, syscall.ENXIO):
		return true, max // no data after off
	case err != nil:
		return false, max
	case d > off:
		return true, min(d-off, max)
	}
	h, err := s.Seek(off, seekHole)
	if err != nil || h <= off {
		return false, max
	}
	return false, min(h-off, max)
}
