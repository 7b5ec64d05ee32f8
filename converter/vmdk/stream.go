package vmdk

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/hikube/ferry/converter/format"
)

// streamInFlight bounds the memory of ReadStream: grains read ahead and
// being inflated hold about this many bytes of buffers.
const streamInFlight = 16 << 20

// ErrNotStreamOptimized: ReadStream was given a VMDK whose grains are not
// in stream order; it needs random access (spooling).
var ErrNotStreamOptimized = errors.New("not streamOptimized")

// ReadStream reads a streamOptimized VMDK from a plain stream (a pipe, a
// member of an OVA): the header, then grain and metadata markers in file
// order until the end-of-stream marker. onHeader gets the virtual size
// before any grain; emit gets each grain's virtual offset and data, in
// strictly increasing order, and must not keep data after returning. Ranges
// no grain covers are zeros. Grains are inflated by a few workers while the
// stream is read; emit runs on one goroutine at a time. r is only read by
// the calling goroutine and not after ReadStream returns; it may be read
// ahead past the end-of-stream marker unless it is a *bufio.Reader of at
// least 64 KiB (what follows then stays in that reader).
func ReadStream(r io.Reader, onHeader func(capacity int64) error, emit func(off int64, data []byte) error) error {
	br, ok := r.(*bufio.Reader)
	if !ok || br.Size() < 64<<10 {
		br = bufio.NewReaderSize(r, 256<<10)
	}
	st := &streamReader{r: br}
	if err := st.header(); err != nil {
		return err
	}
	if err := onHeader(st.capacity); err != nil {
		return err
	}
	return st.run(emit)
}

type streamReader struct {
	r         *bufio.Reader
	pos       int64 // bytes consumed
	hdr       header
	capacity  int64
	grainSize int64
}

func (st *streamReader) read(p []byte) error {
	n, err := io.ReadFull(st.r, p)
	st.pos += int64(n)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return format.Corruptf("vmdk stream: ends at byte %d without an end-of-stream marker", st.pos)
		}
		return fmt.Errorf("vmdk stream: read at %d: %w", st.pos, err)
	}
	return nil
}

func (st *streamReader) skip(n int64) error {
	m, err := st.r.Discard(int(min(n, 1<<30)))
	st.pos += int64(m)
	for err == nil && int64(m) < n {
		n -= int64(m)
		m, err = st.r.Discard(int(min(n, 1<<30)))
		st.pos += int64(m)
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			return format.Corruptf("vmdk stream: ends at byte %d without an end-of-stream marker", st.pos)
		}
		return fmt.Errorf("vmdk stream: read at %d: %w", st.pos, err)
	}
	return nil
}

// header reads the sparse header and the descriptor, and moves to the
// first marker.
func (st *streamReader) header() error {
	var b [sectorSize]byte
	if err := st.read(b[:4]); err != nil {
		return fmt.Errorf("%w: vmdk stream: too short for a header", format.ErrWrongType)
	}
	if string(b[:4]) != magicKDMV {
		return fmt.Errorf("%w: vmdk stream: no sparse extent magic", format.ErrWrongType)
	}
	if err := st.read(b[4:]); err != nil {
		return err
	}
	h := parseHeader(b[:])
	st.hdr = h
	if h.compression != compressDeflate || h.flags&flagMarkers == 0 {
		return fmt.Errorf("%w: %w", ErrNotStreamOptimized, format.Unsupportedf("vmdk stream: compression %d, markers %v; only stream-optimized VMDKs can be read without seeking", h.compression, h.flags&flagMarkers != 0))
	}
	if h.capacity == 0 && h.descOffset != 0 && h.gdOffset != gdAtEnd {
		return format.Unsupportedf("vmdk stream: the header only carries a descriptor")
	}
	if err := h.checkGeometry("stream"); err != nil {
		return err
	}
	st.capacity = int64(h.capacity) * sectorSize
	st.grainSize = int64(h.grainSize) * sectorSize

	// The descriptor sits between the header and the first grain: read it
	// to refuse delta disks, whose unallocated grains live in a parent a
	// stream cannot reach.
	if h.descOffset >= 1 && h.descSize > 0 && h.descSize <= maxDescriptorSize/sectorSize && h.descOffset < 1<<20 {
		if err := st.skip(int64(h.descOffset)*sectorSize - st.pos); err != nil {
			return err
		}
		buf := make([]byte, h.descSize*sectorSize)
		if err := st.read(buf); err != nil {
			return err
		}
		if i := indexNUL(buf); i >= 0 {
			buf = buf[:i]
		}
		if isText(buf) {
			if d, err := parseDescriptor(string(buf), true); err == nil && d.hasParentHint && d.parentHint != "" {
				return format.Unsupportedf("vmdk stream: delta disk (parent %q) cannot be read as a stream", d.parentHint)
			}
		}
	}
	// Grains start at the overhead; metadata before it (descriptor, and
	// for qemu-made streams the grain directory and tables) is skipped.
	if h.overhead > 1<<32 {
		return format.Corruptf("vmdk stream: grains start at sector %d", h.overhead)
	}
	if first := int64(h.overhead) * sectorSize; first > st.pos {
		return st.skip(first - st.pos)
	}
	// Move to a sector boundary.
	if rem := st.pos % sectorSize; rem != 0 {
		return st.skip(sectorSize - rem)
	}
	return nil
}

func indexNUL(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

type streamJob struct {
	off   int64
	raw   []byte // marker and compressed data, sector-padded
	comp  []byte // compressed data, in raw
	out   []byte // inflated grain
	valid int    // bytes of the grain inside the disk
	err   error
	done  chan struct{}
}

// run reads markers in the calling goroutine, inflates grains on workers
// and emits them in order from one more goroutine.
func (st *streamReader) run(emit func(off int64, data []byte) error) error {
	workers := min(runtime.GOMAXPROCS(0), 8)
	perJob := 3*st.grainSize + sectorSize
	slots := int(max(int64(2*workers+2), min(64, streamInFlight/perJob)))

	free := make(chan *streamJob, slots) // jobs are made on demand, up to slots
	work := make(chan *streamJob, slots)
	order := make(chan *streamJob, slots)
	quit := make(chan struct{})
	var quitOnce sync.Once
	stop := func() { quitOnce.Do(func() { close(quit) }) }

	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				j.err = inflateGrain(j.out[:j.valid], int(st.grainSize), j.comp)
				if j.err != nil {
					j.err = fmt.Errorf("vmdk stream: grain at virtual offset %d: %w", j.off, j.err)
				}
				j.done <- struct{}{}
			}
		}()
	}
	emitErr := make(chan error, 1)
	go func() {
		var err error
		for j := range order {
			<-j.done
			if err == nil {
				if err = j.err; err == nil {
					err = emit(j.off, j.out[:j.valid])
				}
				if err != nil {
					stop()
				}
			}
			free <- j
		}
		emitErr <- err
	}()

	readErr := st.produce(free, slots, work, order, quit)
	close(work)
	close(order)
	wg.Wait()
	err := <-emitErr
	if err == nil {
		err = readErr
	}
	return err
}

// produce parses markers until the end-of-stream marker and queues grains.
func (st *streamReader) produce(free chan *streamJob, slots int, work, order chan *streamJob, quit chan struct{}) error {
	var sec [sectorSize]byte
	le := binary.LittleEndian
	maxComp := 2 * st.grainSize
	last := int64(-1)
	for {
		select {
		case <-quit:
			return nil // the emitter reports why
		default:
		}
		at := st.pos
		if err := st.read(sec[:]); err != nil {
			return err
		}
		lba := le.Uint64(sec[0:])
		size := int64(le.Uint32(sec[8:]))
		if size == 0 {
			switch typ := le.Uint32(sec[12:]); typ {
			case markerEOS:
				return nil
			case markerGT, markerGD, markerFooter:
				// lba counts the sectors of metadata that follow.
				if lba > uint64(maxGDEntries) {
					return format.Corruptf("vmdk stream: metadata marker at %d declares %d sectors", at, lba)
				}
				if err := st.skip(int64(lba) * sectorSize); err != nil {
					return err
				}
			default:
				return format.Corruptf("vmdk stream: unknown marker type %d at %d", typ, at)
			}
			continue
		}
		if size > maxComp {
			return format.Corruptf("vmdk stream: grain marker at %d declares %d compressed bytes (max %d)", at, size, maxComp)
		}
		if lba > uint64(st.capacity/sectorSize) || int64(lba)*sectorSize >= st.capacity {
			return format.Corruptf("vmdk stream: grain at %d is for sector %d, beyond the disk (%d sectors)", at, lba, st.capacity/sectorSize)
		}
		off := int64(lba) * sectorSize
		if off%st.grainSize != 0 {
			return format.Corruptf("vmdk stream: grain at %d starts at sector %d, not on a grain boundary", at, lba)
		}
		if off <= last {
			return format.Corruptf("vmdk stream: grain at %d is for offset %d, after offset %d (grains must increase)", at, off, last)
		}
		last = off

		var j *streamJob
		select {
		case j = <-free:
		default:
			if slots > 0 {
				slots--
				j = &streamJob{done: make(chan struct{}, 1)}
				break
			}
			select {
			case j = <-free:
			case <-quit:
				return nil
			}
		}
		total := (markerSize + size + sectorSize - 1) &^ (sectorSize - 1)
		if int64(cap(j.raw)) < total {
			j.raw = make([]byte, (markerSize+maxComp+sectorSize-1)&^(sectorSize-1))
		}
		buf := j.raw[:total]
		copy(buf, sec[:])
		if err := st.read(buf[sectorSize:]); err != nil {
			return err
		}
		j.comp = buf[markerSize : markerSize+size]
		if int64(cap(j.out)) < st.grainSize {
			j.out = make([]byte, st.grainSize)
		}
		j.off = off
		j.valid = int(min(st.grainSize, st.capacity-off))
		j.err = nil
		// order first: the emitter waits on it while a worker fills it.
		order <- j
		work <- j
	}
}
