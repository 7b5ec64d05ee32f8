package vmdk

import (
	"encoding/binary"
	"fmt"
	"sync"
)

// gtCacheEntries bounds the grain tables kept in memory: 4096 tables of 512
// entries are 8 MiB and map 128 GiB of a disk with 64 KiB grains, so a
// conversion reads each table once even with many workers.
const gtCacheEntries = 4096

// gtBatch is how many grain tables that follow one another in the file are
// read in one go (monolithicSparse stores them all together).
const gtBatch = 32

type gtKey struct {
	ext int
	gt  int64
}

// gtCache holds decoded grain tables. Tables are immutable once loaded, so
// callers use them without the lock. Eviction is FIFO: conversions read the
// disk roughly in order.
type gtCache struct {
	mu   sync.Mutex
	m    map[gtKey][]uint32
	fifo []gtKey
	next int
}

func newGTCache() *gtCache {
	return &gtCache{m: make(map[gtKey][]uint32)}
}

func (c *gtCache) lookup(k gtKey) []uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[k]
}

func (c *gtCache) put(k gtKey, gt []uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; ok {
		return
	}
	if len(c.fifo) < gtCacheEntries {
		c.fifo = append(c.fifo, k)
	} else {
		delete(c.m, c.fifo[c.next])
		c.fifo[c.next] = k
		c.next = (c.next + 1) % gtCacheEntries
	}
	c.m[k] = gt
}

// get returns grain table gti of s, loading it (and the tables stored right
// after it) on a miss. Concurrent misses may load a table twice; that costs
// a small read and keeps I/O outside the lock.
func (c *gtCache) get(s *sparse, gti int64) ([]uint32, error) {
	k := gtKey{s.id, gti}
	if gt := c.lookup(k); gt != nil {
		return gt, nil
	}
	// Extend the read over following tables that are contiguous in the file
	// and not cached yet.
	first := int64(s.gd[gti]) * 512
	n := int64(1)
	for gti+n < int64(len(s.gd)) && n < gtBatch {
		next := int64(s.gd[gti+n]) * 512
		if next != first+n*s.gtBytes || c.lookup(gtKey{s.id, gti + n}) != nil {
			break
		}
		n++
	}
	raw := make([]byte, n*s.gtBytes)
	if err := readFull(s.f, raw, first); err != nil {
		return nil, fmt.Errorf("vmdk %s: read grain table %d at offset %d: %w", s.name, gti, first, err)
	}
	// One slice per table, so evicting a table frees it.
	var want []uint32
	for i := int64(0); i < n; i++ {
		gt := make([]uint32, s.gtes)
		b := raw[i*s.gtBytes:]
		for j := range gt {
			gt[j] = binary.LittleEndian.Uint32(b[j*4:])
		}
		c.put(gtKey{s.id, gti + i}, gt)
		if allZero(gt) {
			s.markEmpty(gti + i)
		}
		if i == 0 {
			want = gt
		}
	}
	return want, nil
}

func allZero(gt []uint32) bool {
	for _, v := range gt {
		if v != 0 {
			return false
		}
	}
	return true
}
