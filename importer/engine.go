package importer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math/bits"
	"sync"
	"time"

	"github.com/hikube/ferry/pkg/progress"
)

// remote is the Source over a backend: a block cache with read-ahead.
//
// The file is cut in blocks of bs bytes. Workers fetch blocks with ranged
// requests, normally in file order, up to capB blocks ahead of the hash
// cursor H; a hasher goroutine hashes blocks strictly in order as they
// arrive. Blocks stay cached (bounded by capB) to serve ReadAt:
//
//   - a block in the window [H, H+capB) that a reader waits for is fetched
//     next, out of order if need be (it stays cached until hashed, within
//     the bound);
//   - a small read (≤ 256 KiB) well ahead of the window and of what the
//     converter reads (headers, tables, footers), or in the window when
//     fetching its block would evict unread data, is served by a separate
//     ranged request of aligned 4 KiB chunks, kept in a small metadata
//     cache; its bytes are checked against the in-order stream when the
//     stream gets there (SHA-256 ledger);
//   - a large read beyond the window waits: read-ahead then evicts even
//     blocks not yet read so that the window moves;
//   - bytes behind H that were evicted are fetched again (counted): the
//     64 KiB segments around a small read, else the whole block, checked
//     against the CRC-32C of each segment recorded when it was hashed.
//     Units that small reads touched twice (tables a reader goes back to)
//     move to the metadata cache when their block is evicted.
//
// Read-ahead only evicts blocks the converter is done with (read in full,
// or left well behind the furthest block read in full: metadata and
// padding that nobody reads); it stalls otherwise, which bounds memory
// without fetching anything twice. Eviction of unread blocks happens only
// when a reader or Complete needs the window to move.
type remote struct {
	name  string
	size  int64
	bs    int64
	nb    int
	capB  int
	lag   int // blocks behind the frontier that count as done, read or not
	near  int // blocks behind the frontier kept even when read in full
	conns int
	fetch blockFetcher
	seq   bool // no Range support: one stream, in order
	st    *stats
	prog  *progress.Counter
	h     *hasher

	ctx       context.Context
	cancel    context.CancelCauseFunc
	wg        sync.WaitGroup
	stopWatch func() bool
	onClose   []func() // close a stream body, idle connections

	mu         sync.Mutex
	cond       *sync.Cond
	blocks     map[int]*block
	seg        int64    // CRC segment size: a power of two dividing bs
	crc        []uint32 // CRC-32C of each segment hashed, to check re-fetches
	H          int      // blocks below H are hashed
	next       int      // read-ahead cursor
	want       map[int]int
	refetch    map[int]int
	far        int
	slotWait   int
	frontier   int   // highest block read in full
	lastBehind int64 // end of the last small read behind the hash cursor
	runBehind  int64 // bytes of the run of adjacent small reads ending there
	completing bool
	err        error
	closed     bool
	tick       int64
	first      io.ReadCloser // the probe's body, for block 0

	meta      map[int64]*metaEntry // by chunk index
	metaBytes int64
	metaCap   int64
	ledger    map[int64]*ledgerEntry

	// Counters for tests and tuning.
	nRefetch, nMeta, nMetaBytes, nEvictUnread int64

	hold     bool         // hashing waits for StartHash or Complete
	ranges   []*rangeHash // digests of ranges, fed by the hash loop
	finished bool
	sha      string
	checksum string
	sumErr   error
}

// blockFetcher fills buf with the bytes at off.
type blockFetcher interface {
	// filled, if not nil, is told how much of buf holds data each time
	// more arrives.
	fetch(ctx context.Context, off int64, buf []byte, first io.ReadCloser, filled func(int)) error
}

// segCRCs takes the CRC-32C of each segment of a block as soon as the
// segment has arrived, while its bytes are in the CPU cache: 0.13 s of CPU
// per GB here, against 0.20 s for a pass over the block from memory once
// it is complete; on 2 cores that CPU is shared with the serial hasher.
type segCRCs struct {
	buf  []byte
	seg  int64
	crcs []uint32
}

func (c *segCRCs) filled(n int) {
	for {
		lo := int64(len(c.crcs)) * c.seg
		hi := min(lo+c.seg, int64(len(c.buf)))
		if lo >= hi || hi > int64(n) {
			return
		}
		c.crcs = append(c.crcs, crc32.Checksum(c.buf[lo:hi], castagnoli))
	}
}

type block struct {
	idx      int
	data     []byte
	ready    bool
	hashed   bool
	refetch  bool // fetched again after eviction
	pins     int
	units    []uint64 // 4 KiB units read by ReadAt
	ubytes   []uint16 // bytes read of each unit not yet counted as read
	seen     []uint64 // units touched by small reads
	hot      []uint64 // units touched by small reads more than once
	nUnits   int
	consumed int
	lastUse  int64
	lastTime time.Time
	crcs     []uint32 // CRC-32C of its segments, until hashed
}

// readInFull: the converter is done with the block: every unit counts as
// read (see touchLocked).
func (b *block) readInFull() bool { return b.consumed == b.nUnits }

// unitSize is the unit of consumption tracking; it is the metadata chunk
// so that hot units move to the metadata cache as they are.
const unitSize = metaChunk

type metaEntry struct {
	data    []byte
	loading bool
	lastUse int64
}

// ledgerEntry pairs the digest of a metadata chunk as fetched on the side
// with the digest of the same bytes in the hashed stream; whichever comes
// second compares.
type ledgerEntry struct {
	fetched, streamed bool
	sum, streamSum    [32]byte
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type remoteConfig struct {
	// life and stop, if set, are the context requests run under and its
	// cancel (openHTTP made them for the probe, whose body block 0 reads).
	life    context.Context
	stop    context.CancelCauseFunc
	name    string
	size    int64
	fetch   blockFetcher
	seq     bool
	first   io.ReadCloser
	st      *stats
	o       *Options
	alg     string
	expects string
}

func newRemote(ctx context.Context, c remoteConfig) *remote {
	o := c.o
	r := &remote{
		name:       c.name,
		size:       c.size,
		bs:         o.BlockSize,
		conns:      o.Connections,
		fetch:      c.fetch,
		seq:        c.seq,
		st:         c.st,
		prog:       o.Progress,
		h:          newHasher(c.alg, c.expects),
		blocks:     map[int]*block{},
		want:       map[int]int{},
		refetch:    map[int]int{},
		meta:       map[int64]*metaEntry{},
		ledger:     map[int64]*ledgerEntry{},
		first:      c.first,
		metaCap:    max(o.CacheSize/8, 1<<20),
		frontier:   -1,
		lastBehind: -1 << 62,
	}
	r.cond = sync.NewCond(&r.mu)
	r.hold = o.HoldHash
	r.nb = int((r.size + r.bs - 1) / r.bs)
	r.capB = int(o.CacheSize / r.bs)
	r.lag = max(2, r.capB/2)
	r.near = max(1, r.capB/8)
	// Segments of 64 KiB, larger for huge files so that the CRCs stay
	// under 4 MiB (a million segments).
	r.seg = metaChunk * 16
	for r.size/r.seg > 1<<20 && r.bs%(2*r.seg) == 0 {
		r.seg *= 2
	}
	r.crc = make([]uint32, (r.size+r.seg-1)/r.seg)
	if r.seq {
		r.conns = 1
	}
	r.prog.SetTotal(r.size)
	r.ctx, r.cancel = c.life, c.stop
	if r.ctx == nil {
		r.ctx, r.cancel = context.WithCancelCause(context.WithoutCancel(ctx))
	}
	// The caller's context bounds the whole import: its end stops every
	// goroutine and fails pending reads.
	r.stopWatch = context.AfterFunc(ctx, func() {
		r.mu.Lock()
		r.failLocked(context.Cause(ctx))
		r.mu.Unlock()
	})
	r.wg.Add(1 + r.conns)
	go r.hashLoop()
	for range r.conns {
		go r.worker()
	}
	return r
}

func (r *remote) Name() string { return r.name }
func (r *remote) Size() int64  { return r.size }

func (r *remote) blockLen(idx int) int64 {
	return min(r.bs, r.size-int64(idx)*r.bs)
}

func (r *remote) failLocked(err error) {
	if r.err == nil {
		r.err = err
		r.cancel(err)
	}
	r.cond.Broadcast()
}

// worker fetches blocks until the source is done, failed or closed.
func (r *remote) worker() {
	defer r.wg.Done()
	for {
		r.mu.Lock()
		b, first := r.nextJobLocked()
		r.mu.Unlock()
		if b == nil {
			return
		}
		var sc *segCRCs
		var filled func(int)
		if !b.refetch {
			// The CRCs are taken here, in parallel, rather than by the
			// hasher, the one serial stage.
			sc = &segCRCs{buf: b.data, seg: r.seg, crcs: make([]uint32, 0, (int64(len(b.data))+r.seg-1)/r.seg)}
			filled = sc.filled
		}
		err := r.fetch.fetch(r.ctx, int64(b.idx)*r.bs, b.data, first, filled)
		if err == nil && b.refetch {
			err = r.checkCRC(int64(b.idx)*r.bs, b.data)
		}
		if err == nil && sc != nil {
			if len(sc.crcs) != cap(sc.crcs) {
				err = fmt.Errorf("fetch %s: internal error: block %d filled without all its CRCs", r.name, b.idx)
			}
			b.crcs = sc.crcs
		}
		r.mu.Lock()
		if err != nil {
			r.failLocked(err)
			r.mu.Unlock()
			return
		}
		b.ready = true
		r.tick++
		b.lastUse = r.tick
		b.lastTime = time.Now()
		r.cond.Broadcast()
		r.mu.Unlock()
	}
}

// nextJobLocked waits for a block to fetch and a cache slot for it.
func (r *remote) nextJobLocked() (*block, io.ReadCloser) {
	for {
		if r.err != nil || r.closed {
			return nil, nil
		}
		idx, aggressive := r.chooseLocked()
		if idx >= 0 {
			if buf := r.slotLocked(aggressive); buf != nil {
				n := r.blockLen(idx)
				b := &block{idx: idx, data: buf[:n], refetch: idx < r.H, hashed: idx < r.H}
				if b.refetch {
					r.nRefetch++
				}
				b.nUnits = int((n + unitSize - 1) / unitSize)
				words := (b.nUnits + 63) / 64
				b.units, b.seen, b.hot = make([]uint64, words), make([]uint64, words), make([]uint64, words)
				b.ubytes = make([]uint16, b.nUnits)
				r.blocks[idx] = b
				var first io.ReadCloser
				if idx == 0 && r.first != nil {
					first, r.first = r.first, nil
				}
				return b, first
			}
			r.slotWait++
			r.cond.Wait()
			r.slotWait--
			continue
		}
		r.cond.Wait()
	}
}

// chooseLocked picks the next block to fetch: evicted blocks readers wait
// for, then window blocks readers wait for, then read-ahead in order.
// aggressive allows evicting blocks nobody has finished reading.
func (r *remote) chooseLocked() (idx int, aggressive bool) {
	if !r.seq {
		for i := range r.refetch {
			if r.blocks[i] == nil && i < r.H {
				return i, true
			}
		}
		best := -1
		for i := range r.want {
			if r.blocks[i] == nil && i >= r.H && i < r.H+r.capB && (best < 0 || i < best) {
				best = i
			}
		}
		if best >= 0 {
			return best, true
		}
	}
	if r.next < r.H {
		r.next = r.H
	}
	for r.next < r.nb && r.blocks[r.next] != nil {
		r.next++
	}
	if r.next >= r.nb || r.next >= r.H+r.capB {
		return -1, false
	}
	// Read-ahead evicts only what the converter is done with, unless a
	// reader waits beyond the window or Complete runs: the window must
	// move then. (A stall is no deadlock: any reader that waits makes its
	// fetch aggressive.)
	aggressive = r.completing || r.far > 0 || (r.seq && len(r.want) > 0)
	return r.next, aggressive
}

// slotLocked returns a buffer for a new block, evicting one if the cache
// is full, or nil if nothing may be evicted now.
func (r *remote) slotLocked(aggressive bool) []byte {
	if len(r.blocks) < r.capB {
		// Buffers are allocated up to the bound, then reused from
		// evicted blocks.
		return make([]byte, r.bs)
	}
	victim, vclass := r.victimLocked(aggressive)
	if victim == nil {
		return nil
	}
	if vclass >= 2 {
		r.nEvictUnread++
	}
	r.keepHotLocked(victim)
	delete(r.blocks, victim.idx)
	return victim.data[:cap(victim.data)]
}

// staleAge is how long a block left behind the converter's frontier, not
// read in full, stays untouched before read-ahead may evict it: a worker
// of the converter that lags (descheduled, or slow on one chunk) comes
// back within that time.
const staleAge = 250 * time.Millisecond

// victimLocked chooses the block to evict, by class:
//
//	0: read in full and behind the frontier (or Complete is running);
//	1: well behind the frontier and untouched for staleAge (metadata,
//	   padding, leftovers nobody reads);
//	2: (aggressive) behind the frontier, least recently used first;
//	3: (aggressive) ahead of the frontier, furthest first: the converter
//	   reads in order and will need the nearest blocks first.
//
// Read-ahead evicts classes 0 and 1 only; a fetch a reader waits for may
// evict any hashed block, but for those readers wait for.
func (r *remote) victimLocked(aggressive bool) (*block, int) {
	var victim *block
	vclass := 4
	now := time.Now()
	for _, b := range r.blocks {
		if !b.ready || !b.hashed || b.pins > 0 || r.want[b.idx] > 0 || r.refetch[b.idx] > 0 {
			continue
		}
		var c int
		switch {
		case r.completing:
			c = 0
		case b.readInFull() && b.idx+r.near <= r.frontier:
			// A worker lagging a little may still read the edges of a
			// block read in full: keep the nearest ones.
			c = 0
		case b.idx+r.lag < r.frontier && now.Sub(b.lastTime) >= staleAge:
			c = 1
		case b.idx < r.frontier:
			c = 2
		default:
			c = 3
		}
		if c >= 2 && !aggressive {
			continue
		}
		better := victim == nil || c < vclass
		if !better && c == vclass {
			if c == 3 {
				better = b.idx > victim.idx
			} else {
				better = b.lastUse < victim.lastUse
			}
		}
		if better {
			victim, vclass = b, c
		}
	}
	return victim, vclass
}

// checkCRC checks bytes fetched again (whole segments from off) against
// the CRCs recorded when they were hashed.
func (r *remote) checkCRC(off int64, data []byte) error {
	for o := int64(0); o < int64(len(data)); o += r.seg {
		if crc32.Checksum(data[o:min(o+r.seg, int64(len(data)))], castagnoli) != r.crc[(off+o)/r.seg] {
			return fmt.Errorf("fetch %s: %w: bytes at offset %d differ from when they were first read", r.name, ErrSourceChanged, off+o)
		}
	}
	return nil
}

// hashLoop hashes blocks in file order as they arrive.
func (r *remote) hashLoop() {
	defer r.wg.Done()
	for {
		r.mu.Lock()
		var b *block
		for {
			if r.err != nil || r.closed {
				r.mu.Unlock()
				return
			}
			if r.H == r.nb {
				r.finishLocked()
				r.mu.Unlock()
				return
			}
			if b = r.blocks[r.H]; b != nil && b.ready && (!r.hold || r.completing) {
				break
			}
			r.cond.Wait()
		}
		b.pins++
		base := int64(b.idx) * r.bs
		var ranges []*rangeHash
		for _, rh := range r.ranges {
			if rh.off < base+int64(len(b.data)) && rh.end > base {
				ranges = append(ranges, rh)
			}
		}
		type check struct {
			off int64
			e   *ledgerEntry
		}
		var checks []check
		for c, e := range r.ledger {
			if off := c * metaChunk; off >= base && off < base+int64(len(b.data)) {
				checks = append(checks, check{off, e})
			}
		}
		r.mu.Unlock()

		r.h.write(b.data)
		for _, rh := range ranges {
			lo, hi := max(rh.off, base), min(rh.end, base+int64(len(b.data)))
			rh.h.Write(b.data[lo-base : hi-base])
		}
		sums := make([][32]byte, len(checks))
		for i, c := range checks {
			end := min(c.off+metaChunk, base+int64(len(b.data)))
			sums[i] = sha256.Sum256(b.data[c.off-base : end-base])
		}

		r.mu.Lock()
		b.pins--
		b.hashed = true
		copy(r.crc[base/r.seg:], b.crcs)
		b.crcs = nil
		r.H++
		r.prog.Add(int64(len(b.data)))
		for i, c := range checks {
			e := c.e
			e.streamSum, e.streamed = sums[i], true
			if e.fetched {
				delete(r.ledger, c.off/metaChunk)
				if e.sum != e.streamSum {
					r.failLocked(fmt.Errorf("fetch %s: %w: bytes at offset %d read ahead differ from the same bytes in the stream", r.name, ErrSourceChanged, c.off))
				}
			}
		}
		r.cond.Broadcast()
		r.mu.Unlock()
	}
}

func (r *remote) finishLocked() {
	if r.finished {
		return
	}
	r.finished = true
	r.sha, r.checksum, r.sumErr = r.h.sums(r.name)
	r.cond.Broadcast()
}

// ReadAt reads from the cache, waiting for blocks as needed. Safe for
// concurrent use.
func (r *remote) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read %s: negative offset %d", r.name, off)
	}
	if off >= r.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), r.size-off))
	small := n <= maxMetaRead
	for pos := 0; pos < n; {
		o := off + int64(pos)
		idx := int(o / r.bs)
		in := o - int64(idx)*r.bs
		cnt := int(min(int64(n-pos), r.blockLen(idx)-in))
		if err := r.readBlock(p[pos:pos+cnt], idx, in, small); err != nil {
			return pos, err
		}
		pos += cnt
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// maxMetaRead is the largest read that the metadata path serves: format
// readers' header and table reads are smaller, the converter's data reads
// larger.
const maxMetaRead = 256 << 10

func (r *remote) readBlock(dst []byte, idx int, in int64, small bool) error {
	off := int64(idx)*r.bs + in
	r.mu.Lock()
	// The demand this reader has registered, so that workers see it; it
	// changes (and wakes them) only when the reader's situation does:
	// re-registering on every wake-up would make waiting readers wake one
	// another in a storm.
	const (
		none = iota
		want
		refetch
		far
	)
	reg := none
	setDemand := func(k int) {
		if k == reg {
			return
		}
		// A far reader is also in want (chooseLocked ignores blocks out
		// of the window): victimLocked then spares its block the moment
		// it arrives, before the reader wakes up.
		switch reg {
		case want, refetch, far:
			m := r.want
			if reg == refetch {
				m = r.refetch
			}
			if m[idx]--; m[idx] <= 0 {
				delete(m, idx)
			}
			if reg == far {
				r.far--
			}
		}
		switch k {
		case want:
			r.want[idx]++
		case refetch:
			r.refetch[idx]++
		case far:
			r.want[idx]++
			r.far++
		}
		reg = k
		if k != none {
			r.cond.Broadcast()
		}
	}
	done := func() { setDemand(none) }
	for {
		if r.err != nil {
			done()
			err := r.err
			r.mu.Unlock()
			return err
		}
		if r.closed {
			done()
			r.mu.Unlock()
			return fmt.Errorf("read %s: %w", r.name, ErrClosed)
		}
		b := r.blocks[idx]
		if b != nil && b.ready {
			done()
			b.pins++
			r.touchLocked(b, in, int64(len(dst)), small)
			r.mu.Unlock()
			copy(dst, b.data[in:])
			r.mu.Lock()
			b.pins--
			if b.pins == 0 && r.slotWait > 0 {
				r.cond.Broadcast()
			}
			r.mu.Unlock()
			return nil
		}
		if !r.seq && r.metaHitLocked(dst, off) {
			done()
			r.mu.Unlock()
			return nil
		}
		switch {
		case b != nil: // in flight: wait for it
		case idx < r.H:
			if r.seq {
				done()
				r.mu.Unlock()
				return fmt.Errorf("read %s at offset %d: the server does not support range requests and these bytes were already dropped from the cache: %w", r.name, off, ErrNeedScratch)
			}
			// A small read fetches the few segments again, not the
			// block; unless small reads in a row have gone through a
			// quarter of it and 2 MiB (a reader going through the
			// block): then the rest is worth one request. Format
			// readers loading tables a batch at a time (qemu's
			// streamOptimized VMDK keeps them all at the start) read a
			// few adjacent chunks: the whole block for them cost a
			// block, plus a read-ahead block it evicted.
			if small {
				if off < r.lastBehind-r.seg || off > r.lastBehind+r.seg {
					r.runBehind = 0
				}
				if r.runBehind < max(r.bs/4, 2<<20) {
					done()
					r.runBehind += int64(len(dst))
					r.lastBehind = off + int64(len(dst))
					r.mu.Unlock()
					return r.readMeta(dst, off, r.seg)
				}
				r.runBehind = 0
			}
			setDemand(refetch)
		case small && !r.seq && r.sideReadLocked(idx):
			done()
			r.mu.Unlock()
			return r.readMeta(dst, off, metaChunk)
		case idx >= r.H+r.capB:
			// The window must move, so hashing must run: a hold
			// (Options.HoldHash) ends here rather than wait forever.
			if r.hold {
				r.hold = false
				r.cond.Broadcast()
			}
			setDemand(far)
		default:
			setDemand(want)
		}
		r.cond.Wait()
	}
}

// sideReadLocked tells whether a small read of block idx (not cached, not
// in flight, not behind the hash cursor) is better served by the metadata
// path than by fetching the block: when the block is beyond the window and
// well ahead of what the converter reads in full (a header, a table, a
// footer), or in the window but not due soon while fetching it now would
// evict blocks the converter has yet to read.
func (r *remote) sideReadLocked(idx int) bool {
	if idx >= r.H+r.capB {
		// A cache's worth past the frontier: the converter's data reads
		// are nearer (and wait for the window), metadata is further.
		return idx > r.frontier+r.capB
	}
	if len(r.blocks) < r.capB {
		return false
	}
	v, _ := r.victimLocked(false)
	return v == nil
}

// keepHotLocked copies the hot units of a block being evicted to the
// metadata cache: tables that a format reader reads again and again (a
// qcow2 L2 table, a VHD BAT) then outlive the block without a re-fetch.
// They come from the hashed stream: no check is needed.
func (r *remote) keepHotLocked(b *block) {
	base := int64(b.idx) * r.bs / metaChunk
	for w, word := range b.hot {
		for word != 0 {
			bit := bits.TrailingZeros64(word)
			word &^= 1 << bit
			u := w*64 + bit
			c := base + int64(u)
			if e := r.meta[c]; e != nil {
				continue
			}
			lo := int64(u) * unitSize
			data := append([]byte(nil), b.data[lo:min(lo+unitSize, int64(len(b.data)))]...)
			r.meta[c] = &metaEntry{data: data, lastUse: b.lastUse}
			r.metaBytes += int64(len(data))
		}
	}
	r.evictMetaLocked()
}

// touchLocked records a read of [in, in+n) of b.
func (r *remote) touchLocked(b *block, in, n int64, small bool) {
	r.tick++
	b.lastTime = time.Now()
	b.lastUse = r.tick
	if small {
		for u := int(in / unitSize); u < int((in+n+unitSize-1)/unitSize); u++ {
			w, bit := u/64, uint64(1)<<(u%64)
			if b.seen[w]&bit != 0 || b.refetch {
				b.hot[w] |= bit
			}
			b.seen[w] |= bit
		}
	}
	// A unit counts as read once reads, together, covered half of it:
	// compressed formats read grain by grain, so unit boundaries fall
	// between two reads, and sector padding and grain-table markers are
	// never read by the data path. Counting only units one read covers
	// whole left streamOptimized blocks never "read in full", evicted by
	// LRU and sometimes fetched twice.
	end := in + n
	for u := int(in / unitSize); u < b.nUnits && int64(u)*unitSize < end; u++ {
		w, bit := u/64, uint64(1)<<(u%64)
		if b.units[w]&bit != 0 {
			continue
		}
		lo, hi := max(in, int64(u)*unitSize), min(end, int64(u+1)*unitSize, int64(len(b.data)))
		b.ubytes[u] = uint16(min(int64(b.ubytes[u])+hi-lo, unitSize))
		ulen := min(unitSize, int64(len(b.data))-int64(u)*unitSize)
		if int64(b.ubytes[u])*2 >= ulen {
			b.units[w] |= bit
			b.consumed++
		}
	}
	if b.readInFull() && b.idx > r.frontier {
		r.frontier = b.idx
	}
}

// metaHitLocked serves dst from the metadata cache when it holds all of it.
func (r *remote) metaHitLocked(dst []byte, off int64) bool {
	c0, c1 := off/metaChunk, (off+int64(len(dst))-1)/metaChunk
	for c := c0; c <= c1; c++ {
		if e := r.meta[c]; e == nil || e.loading {
			return false
		}
	}
	r.tick++
	for c := c0; c <= c1; c++ {
		e := r.meta[c]
		e.lastUse = r.tick
		base := c * metaChunk
		lo := max(off, base)
		hi := min(off+int64(len(dst)), base+int64(len(e.data)))
		copy(dst[lo-off:hi-off], e.data[lo-base:hi-base])
	}
	return true
}

// readMeta serves a small read with its own ranged request of whole 4 KiB
// chunks, kept in the metadata cache. Ahead of the hash cursor the chunks
// are recorded in the ledger, to be checked when the stream gets there;
// behind it, the request covers whole CRC segments (align = r.seg) and is
// checked at once.
func (r *remote) readMeta(dst []byte, off int64, align int64) error {
	// The chunks to claim: all those of the aligned range.
	c0 := off / align * align / metaChunk
	c1 := (min((off+int64(len(dst))+align-1)/align*align, r.size) - 1) / metaChunk
	r.mu.Lock()
	var claimed []int64
	for {
		if r.err != nil {
			err := r.err
			r.mu.Unlock()
			return err
		}
		if r.closed {
			r.mu.Unlock()
			return fmt.Errorf("read %s: %w", r.name, ErrClosed)
		}
		if r.metaHitLocked(dst, off) {
			r.mu.Unlock()
			return nil
		}
		loading := false
		for c := c0; c <= c1; c++ {
			if e := r.meta[c]; e != nil && e.loading {
				loading = true
			}
		}
		if !loading {
			for c := c0; c <= c1; c++ {
				if r.meta[c] == nil {
					r.meta[c] = &metaEntry{loading: true}
					claimed = append(claimed, c)
					if int(c*metaChunk/r.bs) >= r.H && r.ledger[c] == nil {
						r.ledger[c] = &ledgerEntry{}
					}
				}
			}
			break
		}
		r.cond.Wait()
	}
	r.mu.Unlock()

	// The whole aligned range: chunks already cached in it are fetched
	// again (rare), which keeps dst inside buf.
	lo := c0 * metaChunk
	hi := min((c1+1)*metaChunk, r.size)
	buf := make([]byte, hi-lo)
	r.mu.Lock()
	r.nMeta++
	r.nMetaBytes += hi - lo
	r.mu.Unlock()
	err := r.fetch.fetch(r.ctx, lo, buf, nil, nil)
	if err == nil && align == r.seg {
		err = r.checkCRC(lo, buf)
	}

	r.mu.Lock()
	if err != nil {
		for _, c := range claimed {
			delete(r.meta, c)
			delete(r.ledger, c)
		}
		r.failLocked(err)
		r.mu.Unlock()
		return err
	}
	r.tick++
	for _, c := range claimed {
		b := c*metaChunk - lo
		data := buf[b:min(b+metaChunk, int64(len(buf)))]
		r.meta[c] = &metaEntry{data: data, lastUse: r.tick}
		r.metaBytes += int64(len(data))
		if e := r.ledger[c]; e != nil {
			e.sum, e.fetched = sha256.Sum256(data), true
			if e.streamed {
				delete(r.ledger, c)
				if e.sum != e.streamSum {
					r.failLocked(fmt.Errorf("fetch %s: %w: bytes at offset %d read ahead differ from the same bytes in the stream", r.name, ErrSourceChanged, c*metaChunk))
				}
			}
		}
	}
	r.evictMetaLocked()
	r.cond.Broadcast()
	err = r.err
	r.mu.Unlock()
	if err != nil {
		return err
	}
	// Serve from buf: the entries may already have been evicted.
	copy(dst, buf[off-lo:])
	return nil
}

func (r *remote) evictMetaLocked() {
	for r.metaBytes > r.metaCap {
		var vk int64 = -1
		var v *metaEntry
		for k, e := range r.meta {
			if !e.loading && (v == nil || e.lastUse < v.lastUse) {
				vk, v = k, e
			}
		}
		if v == nil {
			return
		}
		delete(r.meta, vk)
		r.metaBytes -= int64(len(v.data))
	}
}

// rangeHash is the digest of [off, end) of the source.
type rangeHash struct {
	off, end int64
	h        hash.Hash
}

// StartHash lets hashing begin (see Options.HoldHash).
func (r *remote) StartHash() {
	r.mu.Lock()
	r.hold = false
	r.cond.Broadcast()
	r.mu.Unlock()
}

// DigestRange has the in-order pass hash [off, off+n) with alg too; the
// digest (hex) is known once Complete has returned. It fails when the pass
// has gone past off: register ranges before StartHash.
func (r *remote) DigestRange(off, n int64, alg string) (func() (string, error), error) {
	h := newHash(alg)
	if h == nil || off < 0 || n < 0 || off+n > r.size {
		return nil, fmt.Errorf("digest %s range %d+%d with %q: invalid", r.name, off, n, alg)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if int64(r.H)*r.bs > off {
		return nil, fmt.Errorf("digest %s range at %d: already hashed past it", r.name, off)
	}
	rh := &rangeHash{off: off, end: off + n, h: h}
	r.ranges = append(r.ranges, rh)
	return func() (string, error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if !r.finished {
			return "", fmt.Errorf("digest %s range at %d: source not complete", r.name, off)
		}
		return hex.EncodeToString(rh.h.Sum(nil)), nil
	}, nil
}

// Complete fetches and hashes what was never read, then checks the
// expected checksum.
func (r *remote) Complete(ctx context.Context) (Digests, error) {
	stop := context.AfterFunc(ctx, func() {
		r.mu.Lock()
		r.cond.Broadcast()
		r.mu.Unlock()
	})
	defer stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.completing = true
	r.cond.Broadcast()
	for !r.finished {
		switch {
		case r.err != nil:
			return Digests{}, r.err
		case r.closed:
			return Digests{}, fmt.Errorf("complete %s: %w", r.name, ErrClosed)
		case ctx.Err() != nil:
			return Digests{}, context.Cause(ctx)
		}
		r.cond.Wait()
	}
	d := Digests{
		SHA256:       r.sha,
		Checksum:     r.checksum,
		BytesFetched: r.st.bytes.Load(),
		Requests:     r.st.requests.Load(),
		Retries:      r.st.retries.Load(),
	}
	return d, r.sumErr
}

// Close stops the workers and frees the cache. Pending reads fail.
func (r *remote) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.cond.Broadcast()
	r.mu.Unlock()
	r.cancel(ErrClosed)
	r.stopWatch()
	r.wg.Wait()
	r.mu.Lock()
	if r.first != nil {
		r.first.Close()
		r.first = nil
	}
	r.blocks, r.meta = nil, nil
	r.mu.Unlock()
	for _, f := range r.onClose {
		f()
	}
	return nil
}
