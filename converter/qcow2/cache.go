package qcow2

import (
	"container/list"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/hikube/ferry/converter/format"
)

// l2Cache is an LRU of decoded L2 tables bounded in bytes (tables are a
// cluster each, 512 B to 2 MiB). Concurrent misses on one table wait for a
// single read, so parallel sequential readers load each table once.
type l2Cache struct {
	mu    sync.Mutex
	limit int64
	used  int64
	m     map[uint64]*list.Element
	lru   list.List    // of *l2Table, most recent first
	loads atomic.Int64 // tables read from the file (tests check "once")
}

type l2Table struct {
	off   uint64
	ready chan struct{} // closed once ents/err are set
	ents  []uint64
	err   error
}

func newL2Cache(limit int64) *l2Cache {
	return &l2Cache{limit: limit, m: make(map[uint64]*list.Element)}
}

var l2ReadBufs sync.Pool // *[]byte, raw table bytes

// table returns the L2 table at host offset off, reading it on a miss.
func (img *Image) table(off uint64) ([]uint64, error) {
	c := img.cache
	c.mu.Lock()
	if e, ok := c.m[off]; ok {
		c.lru.MoveToFront(e)
		t := e.Value.(*l2Table)
		c.mu.Unlock()
		<-t.ready
		return t.ents, t.err
	}
	t := &l2Table{off: off, ready: make(chan struct{})}
	c.m[off] = c.lru.PushFront(t)
	c.used += img.clusterSize
	for c.used > c.limit && c.lru.Len() > 1 {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.m, old.Value.(*l2Table).off)
		c.used -= img.clusterSize
	}
	c.mu.Unlock()

	c.loads.Add(1)
	t.ents, t.err = img.loadTable(off)
	close(t.ready)
	if t.err != nil {
		// Do not keep failures: a transient I/O error may succeed later.
		c.mu.Lock()
		if e, ok := c.m[off]; ok && e.Value.(*l2Table) == t {
			c.lru.Remove(e)
			delete(c.m, off)
			c.used -= img.clusterSize
		}
		c.mu.Unlock()
	}
	return t.ents, t.err
}

func (img *Image) loadTable(off uint64) ([]uint64, error) {
	cs := int(img.clusterSize)
	bp, _ := l2ReadBufs.Get().(*[]byte)
	if bp == nil || cap(*bp) < cs {
		b := make([]byte, cs)
		bp = &b
	}
	defer l2ReadBufs.Put(bp)
	b := (*bp)[:cs]
	// Offsets were checked against the file size when the L1 table was read.
	if err := readFull(img.f, b, int64(off)); err != nil {
		if err == io.ErrUnexpectedEOF {
			return nil, format.Corruptf("L2 table at %#x is cut by the end of the file", off)
		}
		return nil, fmt.Errorf("read L2 table at %#x: %w", off, err)
	}
	ents := make([]uint64, cs/8)
	for i := range ents {
		ents[i] = be64(b, i*8)
	}
	return ents, nil
}
