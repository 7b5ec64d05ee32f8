package converter

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hikube/ferry/converter/format"
)

// memImage is an in-memory image with a given extent map: it lets the
// engine be tested on exact layouts (unaligned extents, zero data inside
// allocated extents, huge holes) and faults.
type memImage struct {
	size    int64
	data    map[int64][]byte // non-zero data by offset (within allocated extents)
	extents []format.Extent  // tiles [0, size)
	failAt  int64            // ReadAt covering this offset fails; -1 never
	delay   time.Duration
	reads   atomic.Int64
	active  atomic.Int64
	maxAct  atomic.Int64
}

func (m *memImage) byteAt(off int64) byte {
	for start, b := range m.data {
		if off >= start && off < start+int64(len(b)) {
			return b[off-start]
		}
	}
	return 0
}

func (m *memImage) ReadAt(p []byte, off int64) (int, error) {
	a := m.active.Add(1)
	defer m.active.Add(-1)
	for {
		mx := m.maxAct.Load()
		if a <= mx || m.maxAct.CompareAndSwap(mx, a) {
			break
		}
	}
	m.reads.Add(1)
	if m.delay > 0 {
		time.Sleep(m.delay)
	}
	if m.failAt >= 0 && m.failAt >= off && m.failAt < off+int64(len(p)) {
		return 0, fmt.Errorf("injected read failure at %d", m.failAt)
	}
	clear(p)
	for start, b := range m.data {
		lo, hi := max(start, off), min(start+int64(len(b)), off+int64(len(p)))
		if lo < hi {
			copy(p[lo-off:hi-off], b[lo-start:hi-start])
		}
	}
	n := len(p)
	if off+int64(n) > m.size {
		return int(m.size - off), io.EOF
	}
	return n, nil
}

func (m *memImage) Extent(start, length int64) (format.Extent, error) {
	if start < 0 || start+length > m.size {
		return format.Extent{}, errors.New("out of range")
	}
	for _, e := range m.extents {
		if start >= e.Start && start < e.Start+e.Length {
			e.Length = min(e.Start+e.Length-start, length)
			e.Start = start
			return e, nil
		}
	}
	return format.Extent{}, fmt.Errorf("no extent at %d", start)
}

func (m *memImage) Size() int64       { return m.size }
func (m *memImage) Type() format.Type { return "mem" }
func (m *memImage) Readable() error   { return nil }
func (m *memImage) Close() error      { return nil }
func (m *memImage) want() (string, []byte) {
	b := make([]byte, m.size)
	for start, d := range m.data {
		copy(b[start:], d)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), b
}

// newMem builds an image from (length, kind) runs: 'd' data, 'z' zero
// extent, 'a' allocated extent holding zeros, 'p' allocated with a zero
// 4 KiB block in the middle.
func newMem(seed int64, runs ...any) *memImage {
	rng := rand.New(rand.NewSource(seed))
	m := &memImage{data: map[int64][]byte{}, failAt: -1}
	for i := 0; i < len(runs); i += 2 {
		n := int64(runs[i].(int))
		kind := runs[i+1].(byte)
		e := format.Extent{Start: m.size, Length: n}
		switch kind {
		case 'z':
			e.Zero = true
		case 'd':
			e.Allocated = true
			b := make([]byte, n)
			rng.Read(b)
			m.data[m.size] = b
		case 'a':
			e.Allocated = true
		case 'p':
			e.Allocated = true
			b := make([]byte, n)
			rng.Read(b)
			if n > 3*blockSize {
				clear(b[blockSize : 2*blockSize])
			}
			m.data[m.size] = b
		}
		m.extents = append(m.extents, e)
		m.size += n
	}
	return m
}

// sparseWriter records writes into a buffer and checks that none overlap.
type sparseWriter struct {
	mu      sync.Mutex
	buf     []byte
	written []bool
	err     error
}

func newSparseWriter(n int64) *sparseWriter {
	return &sparseWriter{buf: make([]byte, n), written: make([]bool, n)}
}

func (w *sparseWriter) WriteAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(w.buf)) {
		return 0, fmt.Errorf("write %d+%d beyond target size %d", off, len(p), len(w.buf))
	}
	for i := range p {
		if w.written[off+int64(i)] && w.err == nil {
			w.err = fmt.Errorf("byte %d written twice", off+int64(i))
		}
		w.written[off+int64(i)] = true
	}
	copy(w.buf[off:], p)
	return len(p), nil
}

func TestConvertLayouts(t *testing.T) {
	const K, M = 1 << 10, 1 << 20
	layouts := map[string]*memImage{
		"empty-image":        newMem(1),
		"one-byte":           newMem(2, 1, byte('d')),
		"all-data-unaligned": newMem(3, 5*M+123, byte('d')),
		"holes":              newMem(4, 3*M, byte('z'), 512*K, byte('d'), 7*M+512, byte('z'), 65*K, byte('d')),
		"allocated-zeros":    newMem(5, 2*M, byte('a'), 64*K, byte('d'), 3*M, byte('a')),
		"zero-block-inside":  newMem(6, 6*M, byte('p'), 4*K, byte('z'), 1*M, byte('p')),
		"odd-extents":        newMem(7, 512, byte('d'), 1536, byte('z'), 4097, byte('d'), 8191, byte('a'), 3, byte('d')),
	}
	for name, img := range layouts {
		wantSum, wantBytes := img.want()
		for _, workers := range []int{1, 2, 7} {
			for _, chunk := range []int64{4 * K, 64 * K, 2 * M} {
				t.Run(fmt.Sprintf("%s/w%d/c%d", name, workers, chunk), func(t *testing.T) {
					ctx := context.Background()
					// Random-access target + digest.
					w := newSparseWriter(img.size)
					res, err := Convert(ctx, img, Options{Workers: workers, ChunkSize: chunk, WriterAt: w, Digest: true})
					if err != nil {
						t.Fatal(err)
					}
					if w.err != nil {
						t.Fatal(w.err)
					}
					if !bytes.Equal(w.buf, wantBytes) {
						t.Fatal("WriterAt target differs from the image")
					}
					if res.RawSHA256 != wantSum {
						t.Fatalf("digest %s, want %s", res.RawSHA256, wantSum)
					}
					// Sparse: no 4 KiB block of zeros is written.
					for off := int64(0); off < img.size; off += blockSize {
						end := min(off+blockSize, img.size)
						if bytes.Equal(wantBytes[off:end], make([]byte, end-off)) {
							for i := off; i < end; i++ {
								if w.written[i] {
									t.Fatalf("zero block at %d was written", off)
								}
							}
						}
					}
					if res.VirtualSize != img.size {
						t.Fatalf("virtual size %d, want %d", res.VirtualSize, img.size)
					}
					// Stream target.
					var out bytes.Buffer
					res, err = Convert(ctx, img, Options{Workers: workers, ChunkSize: chunk, Stream: &out, Digest: true})
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(out.Bytes(), wantBytes) || res.RawSHA256 != wantSum || res.BytesWritten != img.size {
						t.Fatalf("stream differs (len %d want %d, written %d)", out.Len(), len(wantBytes), res.BytesWritten)
					}
					// Block device semantics: every byte written.
					w = newSparseWriter(img.size)
					for i := range w.buf {
						w.buf[i] = 0xAA // old content that must be overwritten
					}
					if _, err := Convert(ctx, img, Options{Workers: workers, ChunkSize: chunk, WriterAt: w, WriteZeros: true}); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(w.buf, wantBytes) {
						t.Fatal("WriteZeros target differs from the image")
					}
				})
			}
		}
	}
}

func TestConvertHugeHoleIsFast(t *testing.T) {
	// 1 TiB of nothing: mapped, not read, not written.
	img := newMem(1, 1<<40, byte('z'))
	w := &countingWriter{}
	start := time.Now()
	res, err := Convert(context.Background(), img, Options{WriterAt: w})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("1 TiB hole took %v", d)
	}
	if img.reads.Load() != 0 || w.n.Load() != 0 || res.AllocatedBytes != 0 {
		t.Fatalf("hole was read (%d) or written (%d)", img.reads.Load(), w.n.Load())
	}
}

type countingWriter struct{ n atomic.Int64 }

func (w *countingWriter) WriteAt(p []byte, off int64) (int, error) {
	w.n.Add(int64(len(p)))
	return len(p), nil
}

func TestConvertReadErrorStops(t *testing.T) {
	img := newMem(1, 64<<20, byte('d'))
	img.failAt = 40 << 20
	_, err := Convert(context.Background(), img, Options{Workers: 3, WriterAt: newSparseWriter(img.size)})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("injected read failure")) {
		t.Fatalf("err = %v, want the injected failure", err)
	}
}

type failingWriter struct{}

func (failingWriter) WriteAt(p []byte, off int64) (int, error) { return 0, errors.New("disk full") }
func (failingWriter) Write(p []byte) (int, error)              { return 0, errors.New("broken pipe") }

func TestConvertWriteErrors(t *testing.T) {
	img := newMem(1, 8<<20, byte('d'))
	if _, err := Convert(context.Background(), img, Options{WriterAt: failingWriter{}}); err == nil || !bytes.Contains([]byte(err.Error()), []byte("disk full")) {
		t.Fatalf("WriterAt err = %v", err)
	}
	if _, err := Convert(context.Background(), img, Options{Stream: failingWriter{}}); err == nil || !bytes.Contains([]byte(err.Error()), []byte("broken pipe")) {
		t.Fatalf("Stream err = %v", err)
	}
}

func TestConvertCancel(t *testing.T) {
	img := newMem(1, 256<<20, byte('d'))
	img.delay = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	start := time.Now()
	_, err := Convert(ctx, img, Options{Workers: 4, Stream: io.Discard, Digest: true})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("cancel took %v", d)
	}
}

func TestConvertBoundedParallelism(t *testing.T) {
	img := newMem(1, 64<<20, byte('d'))
	img.delay = time.Millisecond
	if _, err := Convert(context.Background(), img, Options{Workers: 3, Stream: io.Discard}); err != nil {
		t.Fatal(err)
	}
	if got := img.maxAct.Load(); got > 3 || got < 2 {
		t.Fatalf("max concurrent reads %d, want 2..3 with 3 workers", got)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, o := range []Options{
		{},
		{Workers: -1, Stream: io.Discard},
		{ChunkSize: 1000, Stream: io.Discard},
		{ChunkSize: 128 << 20, Stream: io.Discard},
		{Workers: 1000, Stream: io.Discard},
	} {
		if err := o.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", o)
		}
	}
}
