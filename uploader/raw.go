package uploader

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Progress is told how many RAW bytes went out; a restarted transfer
// reports its rewind as a negative count.
type Progress interface{ Add(n int64) }

// RawSource opens the RAW image for reading from its first byte. Network
// targets call it once per transfer attempt, because an upload that broke
// restarts from zero (CDI cannot resume). A source that verifies what it
// reads (a checksum known up front) must report a mismatch from Read in
// place of io.EOF: the upload then never completes. A failure reported only
// by Close comes after the target took the image; a DataVolume target
// deletes it then.
type RawSource func(ctx context.Context) (io.ReadCloser, error)

// Image is what a network target uploads.
type Image struct {
	// Open streams the RAW image.
	Open RawSource
	// VirtualSize is the RAW size in bytes; 0 or -1 when only the stream's
	// end tells (a compressed RAW): S3 takes it as is, a DataVolume then
	// needs an explicit Size.
	VirtualSize int64
	// SourceURL names the original image (recorded on the target).
	SourceURL string
	// SourceSHA256 is the original image's digest when known before the
	// transfer; SourceDigest, if set, is asked after the stream ended for
	// a digest computed on the way (streaming verification).
	SourceSHA256 string
	SourceDigest func() string
}

func (img *Image) validate() error {
	if img.Open == nil {
		return errors.New("image: no RAW source")
	}
	return nil
}

func (img *Image) sourceSHA256() string {
	if img.SourceSHA256 != "" {
		return img.SourceSHA256
	}
	if img.SourceDigest != nil {
		return img.SourceDigest()
	}
	return ""
}

// Compression of an upload stream.
type Compression string

const (
	CompressNone Compression = "none"
	CompressGzip Compression = "gzip"
	CompressZstd Compression = "zstd"
)

// ParseCompression accepts "", none, gzip, zstd.
func ParseCompression(s string) (Compression, error) {
	switch Compression(s) {
	case "", CompressNone:
		return CompressNone, nil
	case CompressGzip, CompressZstd:
		return Compression(s), nil
	}
	return "", fmt.Errorf("unknown compression %q (none, gzip, zstd)", s)
}

// rawStream is one attempt's body: the RAW source, hashed and counted in
// order, optionally compressed on the fly. It opens the source on first
// Read so that a request answered before its body is needed (503 after
// Expect: 100-continue) costs no conversion work.
type rawStream struct {
	ctx      context.Context
	open     RawSource
	comp     Compression
	progress Progress

	once    sync.Once
	src     io.ReadCloser
	r       io.Reader // what Read serves
	pr      *io.PipeReader
	done    chan struct{} // compressor finished
	h       hash.Hash
	raw     int64 // RAW bytes read from the source
	wire    int64 // bytes served
	srcErr  error // the source failed (not the network)
	eof     bool  // the source reached its end cleanly
	started bool  // the source was opened
	mu      sync.Mutex
	closeMu sync.Mutex
	closed  bool
}

func newRawStream(ctx context.Context, open RawSource, comp Compression, p Progress) *rawStream {
	return &rawStream{ctx: ctx, open: open, comp: comp, progress: p, h: sha256.New()}
}

// countingSource hashes and counts what the source yields and records its
// failures apart from the network's.
type countingSource struct{ s *rawStream }

func (c countingSource) Read(b []byte) (int, error) {
	s := c.s
	n, err := s.src.Read(b)
	if n > 0 {
		s.h.Write(b[:n])
		s.mu.Lock()
		s.raw += int64(n)
		s.mu.Unlock()
		if s.progress != nil {
			s.progress.Add(int64(n))
		}
	}
	if err == io.EOF {
		s.mu.Lock()
		s.eof = true
		s.mu.Unlock()
	} else if err != nil {
		s.mu.Lock()
		s.srcErr = err
		s.mu.Unlock()
	}
	return n, err
}

func (s *rawStream) start() error {
	s.mu.Lock()
	s.started = true
	s.mu.Unlock()
	src, err := s.open(s.ctx)
	if err != nil {
		s.mu.Lock()
		s.srcErr = err
		s.mu.Unlock()
		return err
	}
	s.src = src
	in := countingSource{s}
	switch s.comp {
	case CompressGzip, CompressZstd:
		pr, pw := io.Pipe()
		s.pr = pr
		s.done = make(chan struct{})
		go func() {
			defer close(s.done)
			pw.CloseWithError(compress(pw, in, s.comp))
		}()
		s.r = pr
	default:
		s.r = in
	}
	return nil
}

func compress(w io.Writer, r io.Reader, c Compression) error {
	var zw io.WriteCloser
	var err error
	if c == CompressGzip {
		// BestSpeed: the wire, not the ratio, is what compression buys.
		zw, err = gzip.NewWriterLevel(w, gzip.BestSpeed)
	} else {
		zw, err = zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(min(runtime.NumCPU(), 4)))
	}
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	if _, err := io.CopyBuffer(zw, r, buf); err != nil {
		zw.Close()
		return err
	}
	return zw.Close()
}

func (s *rawStream) Read(b []byte) (int, error) {
	var err error
	s.once.Do(func() { err = s.start() })
	if err != nil {
		return 0, err
	}
	if s.r == nil {
		return 0, s.sourceErr()
	}
	n, err := s.r.Read(b)
	s.mu.Lock()
	s.wire += int64(n)
	s.mu.Unlock()
	return n, err
}

// Close releases the source (and the compressor); it is safe to call
// more than once and concurrently with the transport's own Close.
func (s *rawStream) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	// Make sure start cannot run after Close.
	s.once.Do(func() {})
	if s.pr != nil {
		s.pr.CloseWithError(errors.New("upload attempt ended"))
		<-s.done
	}
	if s.src != nil {
		if err := s.src.Close(); err != nil {
			s.mu.Lock()
			if s.srcErr == nil {
				s.srcErr = err
			}
			s.mu.Unlock()
			return err
		}
	}
	return nil
}

func (s *rawStream) sourceErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srcErr
}

func (s *rawStream) srcStarted() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started
}

// complete reports whether the whole source went out.
func (s *rawStream) complete() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eof && s.srcErr == nil
}

func (s *rawStream) counts() (raw, wire int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.raw, s.wire
}

func (s *rawStream) sum() string { return hex.EncodeToString(s.h.Sum(nil)) }

// rewind takes an abandoned attempt's bytes back out of the progress.
func (s *rawStream) rewind() {
	if s.progress == nil {
		return
	}
	raw, _ := s.counts()
	if raw > 0 {
		s.progress.Add(-raw)
	}
}
