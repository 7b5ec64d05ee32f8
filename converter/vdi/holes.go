package vdi

import (
	"os"
	"sync"
)

// holes finds holes of a local sparse file with SEEK_DATA/SEEK_HOLE, so
// Extent reports them as zeros and they are never read: qemu does the same
// through the file layer. Seeking moves the shared file offset (ReadAt
// does not use it), so seeks are serialized.
type holes struct {
	mu sync.Mutex
	f  *os.File // nil: not a local file, everything is data
}

const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// probe reports whether host offset off is in a hole, and how far (at most
// n bytes) that stays true.
func (h *holes) probe(off, n int64) (hole bool, length int64) {
	if h.f == nil {
		return false, n
	}
	h.mu.Lock()
	defer h.mu.Unlock()
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
