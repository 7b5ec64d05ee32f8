package converter

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hikube/ferry/converter/format"
)

// Defaults of the convert engine.
const (
	DefaultChunkSize = 2 << 20
	// blockSize is the granularity of zero detection in data, as qemu-img's
	// default -S 4k, and the alignment the file target needs for O_DIRECT.
	blockSize = 4096
	// planSpan bounds one Extent call so workers start before a huge image
	// is mapped; zero runs are merged across calls.
	planSpan = 256 << 20
	// maxZeroItem bounds one zero item so progress moves on huge holes.
	maxZeroItem = 1 << 30
)

// Progress receives the number of virtual bytes converted; called from
// several goroutines.
type Progress interface{ Add(n int64) }

// Options configure one conversion. At least one of WriterAt and Stream is
// set.
type Options struct {
	// Workers read and decompress in parallel (default: number of CPUs).
	Workers int
	// IODepth is the number of writes in flight to a WriterAt target
	// (default 4): disk writes overlap with decompression.
	IODepth int
	// ChunkSize is the unit of work (default 2 MiB, multiple of 4 KiB).
	ChunkSize int64
	// WriterAt receives the image out of order. Runs of zeros are not
	// written: the target must read as zeros (a new or truncated file)
	// unless WriteZeros is set.
	WriterAt io.WriterAt
	// WriteZeros writes zero runs too (block devices with old content).
	WriteZeros bool
	// Stream receives the whole image in order, zeros included.
	Stream io.Writer
	// Digest computes the SHA-256 of the RAW image, in order. It costs one
	// core at ~2 GB/s of virtual size, holes included.
	Digest bool
	// Progress, if set, is told of converted bytes.
	Progress Progress
}

// Validate checks the options and fills defaults.
func (o *Options) Validate() error {
	if o.Workers < 0 || o.IODepth < 0 || o.ChunkSize < 0 {
		return errors.New("convert: negative workers, io depth or chunk size")
	}
	if o.Workers == 0 {
		o.Workers = runtime.NumCPU()
	}
	if o.Workers > 256 {
		return fmt.Errorf("convert: %d workers is too many (max 256)", o.Workers)
	}
	if o.IODepth == 0 {
		o.IODepth = 4
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = DefaultChunkSize
	}
	if o.ChunkSize%blockSize != 0 || o.ChunkSize > 64<<20 {
		return fmt.Errorf("convert: chunk size %d must be a multiple of %d and at most 64 MiB", o.ChunkSize, blockSize)
	}
	if o.WriterAt == nil && o.Stream == nil && !o.Digest {
		return errors.New("convert: no target")
	}
	return nil
}

// Result describes a finished conversion.
type Result struct {
	Format      format.Type `json:"format"`
	VirtualSize int64       `json:"virtual_size"`
	// AllocatedBytes is the part of the virtual disk that holds data
	// (everything but holes and zero clusters).
	AllocatedBytes int64 `json:"allocated_bytes"`
	// BytesWritten is what reached the target: data runs for a sparse
	// file, everything for a stream.
	BytesWritten int64         `json:"bytes_written"`
	RawSHA256    string        `json:"raw_sha256,omitempty"`
	Duration     time.Duration `json:"-"`
}

// buffer is one chunk's memory; data starts at the chunk's offset modulo
// blockSize so file offsets and memory addresses share their alignment
// (O_DIRECT needs both).
type buffer struct{ mem []byte }

type item struct {
	seq    int64
	off, n int64
	zero   bool // known zero from the extent map: nothing read
	buf    *buffer
	data   []byte // the chunk's bytes within buf
}

// Convert copies img to the targets in o, in parallel, with bounded memory
// (about (2×Workers+IODepth+2) × ChunkSize). It stops promptly when ctx is
// cancelled. The caller owns the targets: on error it discards them.
func Convert(ctx context.Context, img format.Image, o Options) (*Result, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	size := img.Size()
	if size < 0 {
		return nil, fmt.Errorf("convert: image size unknown")
	}
	start := time.Now()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	e := &engine{o: o, img: img, size: size, ctx: ctx, cancel: cancel}
	e.res.Format = img.Type()
	e.res.VirtualSize = size
	nbuf := 2*o.Workers + o.IODepth + 2
	e.free = make(chan *buffer, nbuf)
	for i := 0; i < nbuf; i++ {
		e.free <- &buffer{mem: alignedBlock(int(o.ChunkSize) + blockSize)}
	}
	ordered := o.Stream != nil || o.Digest
	if o.Digest {
		e.hash = sha256.New()
	}

	work := make(chan *item, o.Workers)
	writes := make(chan *item, nbuf)
	done := make(chan *item, nbuf)

	var wg, wwg sync.WaitGroup
	// Planner: walks the extent map in order, hands data chunks to
	// workers (each with a buffer taken in order, so the in-order stage
	// can never wait for a chunk that waits for a buffer).
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(work)
		e.plan(work, writes, done, ordered)
	}()
	for i := 0; i < o.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.worker(work, writes, done, ordered)
		}()
	}
	for i := 0; i < o.IODepth; i++ {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			e.writer(writes, done, ordered)
		}()
	}
	go func() {
		wg.Wait()
		close(writes)
		wwg.Wait()
		close(done)
	}()
	e.finish(done, ordered)

	if err := context.Cause(ctx); err != nil && !errors.Is(err, errFinished) {
		return nil, err
	}
	e.res.AllocatedBytes = e.allocated.Load()
	e.res.BytesWritten = e.written.Load()
	if o.Digest {
		e.res.RawSHA256 = hex.EncodeToString(e.hash.Sum(nil))
	}
	e.res.Duration = time.Since(start)
	return &e.res, nil
}

var errFinished = errors.New("finished")

type engine struct {
	o      Options
	img    format.Image
	size   int64
	ctx    context.Context
	cancel context.CancelCauseFunc
	free   chan *buffer
	hash   hash.Hash

	res       Result
	allocated atomic.Int64
	written   atomic.Int64
}

func (e *engine) fail(err error) { e.cancel(err) }

func (e *engine) send(ch chan<- *item, it *item) bool {
	select {
	case ch <- it:
		return true
	case <-e.ctx.Done():
		return false
	}
}

func (e *engine) plan(work, writes, done chan<- *item, ordered bool) {
	var seq int64
	off := int64(0)
	for off < e.size {
		if e.ctx.Err() != nil {
			return
		}
		ext, err := e.img.Extent(off, min(e.size-off, planSpan))
		if err != nil {
			e.fail(fmt.Errorf("map %d: %w", off, err))
			return
		}
		if ext.Start != off || ext.Length <= 0 || ext.Length > e.size-off {
			e.fail(fmt.Errorf("map %d: reader returned extent %d+%d", off, ext.Start, ext.Length))
			return
		}
		if ext.Zero {
			// Merge following zero extents into items of up to 1 GiB.
			n := ext.Length
			for off+n < e.size && n < maxZeroItem {
				nx, err := e.img.Extent(off+n, min(e.size-off-n, planSpan))
				if err != nil {
					e.fail(fmt.Errorf("map %d: %w", off+n, err))
					return
				}
				if !nx.Zero || nx.Length <= 0 {
					break
				}
				n += nx.Length
			}
			for n > 0 {
				m := min(n, maxZeroItem)
				it := &item{seq: seq, off: off, n: m, zero: true}
				seq++
				switch {
				case e.o.WriterAt != nil && e.o.WriteZeros:
					if !e.send(writes, it) {
						return
					}
				default:
					if !e.send(done, it) {
						return
					}
				}
				off += m
				n -= m
			}
			continue
		}
		e.allocated.Add(ext.Length)
		for end := off + ext.Length; off < end; {
			// Chunks end on ChunkSize boundaries of the virtual disk.
			n := min(end-off, e.o.ChunkSize-off%e.o.ChunkSize)
			var buf *buffer
			select {
			case buf = <-e.free:
			case <-e.ctx.Done():
				return
			}
			phase := off % blockSize
			it := &item{seq: seq, off: off, n: n, buf: buf, data: buf.mem[phase : phase+n]}
			seq++
			if !e.send(work, it) {
				return
			}
			off += n
		}
	}
}

func (e *engine) worker(work <-chan *item, writes, done chan<- *item, ordered bool) {
	for it := range work {
		if e.ctx.Err() != nil {
			e.release(it)
			continue
		}
		n, err := e.img.ReadAt(it.data, it.off)
		if n < len(it.data) {
			if err == nil || err == io.EOF {
				err = fmt.Errorf("%w: short read", io.ErrUnexpectedEOF)
			}
			e.fail(fmt.Errorf("read %d+%d: %w", it.off, it.n, err))
			e.release(it)
			continue
		}
		next := done
		if e.o.WriterAt != nil {
			next = writes
		}
		if !e.send(next, it) {
			e.release(it)
		}
	}
}

var zeroBlock = make([]byte, blockSize)

func (e *engine) writer(writes <-chan *item, done chan<- *item, ordered bool) {
	for it := range writes {
		if e.ctx.Err() != nil {
			e.release(it)
			continue
		}
		var err error
		var written int64
		if it.zero {
			written, err = writeZeros(e.o.WriterAt, it.off, it.n)
		} else {
			written, err = writeData(e.o.WriterAt, it.data, it.off, e.o.WriteZeros)
		}
		if err != nil {
			e.fail(fmt.Errorf("write %d+%d: %w", it.off, it.n, err))
			e.release(it)
			continue
		}
		e.written.Add(written)
		if !ordered {
			e.release(it)
			continue
		}
		if !e.send(done, it) {
			e.release(it)
		}
	}
}

// writeData writes the non-zero runs of data (4 KiB granularity on the
// virtual disk, like qemu-img -S 4k), or all of it with all set.
func writeData(w io.WriterAt, data []byte, off int64, all bool) (int64, error) {
	if all {
		_, err := w.WriteAt(data, off)
		return int64(len(data)), err
	}
	var written int64
	runStart := -1
	i := 0
	for i < len(data) {
		// Block boundaries follow the virtual disk, not the chunk.
		end := min(len(data), i+blockSize-int((off+int64(i))%blockSize))
		isZero := bytes.Equal(data[i:end], zeroBlock[:end-i])
		if !isZero && runStart < 0 {
			runStart = i
		}
		if isZero && runStart >= 0 {
			if _, err := w.WriteAt(data[runStart:i], off+int64(runStart)); err != nil {
				return written, err
			}
			written += int64(i - runStart)
			runStart = -1
		}
		i = end
	}
	if runStart >= 0 {
		if _, err := w.WriteAt(data[runStart:], off+int64(runStart)); err != nil {
			return written, err
		}
		written += int64(len(data) - runStart)
	}
	return written, nil
}

var zeroChunk = alignedBlock(1 << 20)

func writeZeros(w io.WriterAt, off, n int64) (int64, error) {
	var written int64
	for n > 0 {
		// Keep writes aligned: first up to the next MiB boundary.
		m := min(n, int64(len(zeroChunk))-off%int64(len(zeroChunk)))
		phase := off % blockSize
		if _, err := w.WriteAt(zeroChunk[phase:phase+m], off); err != nil {
			return written, err
		}
		written += m
		off += m
		n -= m
	}
	return written, nil
}

// finish is the in-order stage: it feeds the stream and the digest in
// virtual-disk order, holding out-of-order chunks until their turn (their
// number is bounded by the buffer pool).
func (e *engine) finish(done <-chan *item, ordered bool) {
	pending := map[int64]*item{}
	var next int64
	for it := range done {
		if !ordered || e.ctx.Err() != nil {
			e.release(it)
			continue
		}
		pending[it.seq] = it
		for {
			cur, ok := pending[next]
			if !ok {
				break
			}
			delete(pending, next)
			next++
			if err := e.emit(cur); err != nil {
				e.fail(err)
			}
			e.release(cur)
		}
	}
	for _, it := range pending {
		e.release(it)
	}
}

func (e *engine) emit(it *item) error {
	if e.ctx.Err() != nil {
		return nil
	}
	if !it.zero {
		if e.hash != nil {
			e.hash.Write(it.data)
		}
		if e.o.Stream != nil {
			if _, err := e.o.Stream.Write(it.data); err != nil {
				return fmt.Errorf("write stream at %d: %w", it.off, err)
			}
			e.written.Add(it.n)
		}
		return nil
	}
	for n := it.n; n > 0; {
		m := min(n, int64(len(zeroChunk)))
		if e.hash != nil {
			e.hash.Write(zeroChunk[:m])
		}
		if e.o.Stream != nil {
			if _, err := e.o.Stream.Write(zeroChunk[:m]); err != nil {
				return fmt.Errorf("write stream at %d: %w", it.off+it.n-n, err)
			}
		}
		n -= m
		if e.ctx.Err() != nil {
			return nil
		}
	}
	if e.o.Stream != nil {
		e.written.Add(it.n)
	}
	return nil
}

func (e *engine) release(it *item) {
	if e.o.Progress != nil && e.ctx.Err() == nil {
		e.o.Progress.Add(it.n)
	}
	if it.buf != nil {
		e.free <- it.buf
		it.buf = nil
	}
}

// alignedBlock returns n bytes starting on a 4 KiB boundary.
func alignedBlock(n int) []byte {
	b := make([]byte, n+blockSize)
	a := int(uintptrOf(b) % blockSize)
	if a != 0 {
		a = blockSize - a
	}
	return b[a : a+n : a+n]
}
