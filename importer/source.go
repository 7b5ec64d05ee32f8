package importer

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/hikube/ferry/converter/format"
)

// Source is a random-access source: it satisfies format.File (ReaderAt,
// Closer, Name, Size), so format readers and the converter read it like a
// local file.
type Source interface {
	format.File
	// Complete reads (and hashes) any bytes not read yet, verifies the
	// expected checksum, and returns the digests and counters. A mismatch
	// is a *ChecksumError. The caller must call it, and check its error,
	// before it presents the output as complete.
	Complete(ctx context.Context) (Digests, error)
}

// Digests is what Complete reports.
type Digests struct {
	// SHA256 is the hex SHA-256 of the source file as fetched. Always set
	// for remote sources; for a local file only when a checksum was asked
	// for (it is then read once more, in order).
	SHA256 string
	// Checksum is "alg:hex" as requested and verified; "" when none was
	// requested.
	Checksum string
	// BytesFetched counts body bytes received (all requests, retries and
	// re-fetches included); Requests the requests made; Retries the
	// retried failures.
	BytesFetched, Requests, Retries int64
}

// srcKind classifies a source string.
type srcKind int

const (
	kindFile srcKind = iota
	kindHTTP
	kindS3
	kindStdin
)

func classify(src string) (srcKind, string, error) {
	if src == "-" {
		return kindStdin, "", nil
	}
	lower := strings.ToLower(src)
	switch {
	case strings.HasPrefix(lower, "http://"), strings.HasPrefix(lower, "https://"):
		return kindHTTP, src, nil
	case strings.HasPrefix(lower, "s3://"):
		return kindS3, src, nil
	case strings.HasPrefix(lower, "file://"):
		u, err := url.Parse(src)
		if err != nil {
			return 0, "", fmt.Errorf("source %s: %w", src, stripURLError(err))
		}
		if u.Host != "" && u.Host != "localhost" {
			return 0, "", fmt.Errorf("source %s: file URLs name a local path (file:///path)", src)
		}
		return kindFile, u.Path, nil
	}
	if i := strings.Index(src, "://"); i > 0 && !strings.ContainsAny(src[:i], "/.") {
		return 0, "", fmt.Errorf("source %s: unsupported scheme %q (want a path, file://, http://, https://, s3:// or -)", redactURL(src), src[:i])
	}
	return kindFile, src, nil
}

// baseName is the file name of a source, to look it up in a checksums file.
func baseName(src string) string {
	kind, loc, err := classify(src)
	if err != nil {
		return ""
	}
	switch kind {
	case kindHTTP:
		if u, err := url.Parse(loc); err == nil {
			return path.Base(u.Path)
		}
	case kindS3:
		return path.Base(strings.TrimPrefix(loc[len("s3://"):], "/"))
	case kindFile:
		return filepath.Base(loc)
	}
	return ""
}

// expectedChecksum resolves Checksum or ChecksumURL to (alg, hex).
func expectedChecksum(ctx context.Context, src string, o *Options) (alg, hexsum string, err error) {
	switch {
	case o.Checksum != "":
		return ParseChecksum(o.Checksum)
	case o.ChecksumURL != "":
		data, err := fetchSmall(ctx, o.ChecksumURL, src, o)
		if err != nil {
			return "", "", err
		}
		alg, hexsum, err := FindInSumsFile(data, baseName(src))
		if err != nil {
			return "", "", fmt.Errorf("%s: %w", redactURL(o.ChecksumURL), err)
		}
		return alg, hexsum, nil
	}
	return "", "", nil
}

// Open opens src for random access: a local path or file:// URL, an
// http(s):// URL or s3://BUCKET/KEY. ctx bounds the whole life of the
// Source: when it ends, fetching stops and reads fail. Open does not read
// stdin ("-"): use OpenStream (pkg/pipeline.OpenInput unwraps and spools).
func Open(ctx context.Context, src string, o Options) (Source, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	kind, loc, err := classify(src)
	if err != nil {
		return nil, err
	}
	if kind == kindStdin {
		return nil, fmt.Errorf("source -: stdin is not random-access: %w", ErrNeedScratch)
	}
	alg, expects, err := expectedChecksum(ctx, src, &o)
	if err != nil {
		return nil, err
	}
	switch kind {
	case kindHTTP:
		return openHTTP(ctx, loc, &o, alg, expects)
	case kindS3:
		return openS3(ctx, loc, &o, alg, expects)
	}
	return openLocal(ctx, loc, &o, alg, expects)
}

func newFetcher(be backend, st *stats, o *Options) *fetcher {
	return &fetcher{be: be, st: st, retries: o.retries, base: o.retryBase, raMax: o.retryAfterMax, stall: o.Timeout}
}

// lifetime returns the context a remote source's requests run under: it
// ends when ctx does or when the source is closed (stop), so that a body
// opened by the probe stops with the rest.
func lifetime(ctx context.Context) (context.Context, context.CancelCauseFunc) {
	life, stop := context.WithCancelCause(context.WithoutCancel(ctx))
	after := context.AfterFunc(ctx, func() { stop(context.Cause(ctx)) })
	return life, func(err error) {
		after()
		stop(err)
	}
}

func openHTTP(ctx context.Context, src string, o *Options, alg, expects string) (Source, error) {
	be, err := newHTTPBackend(src, o)
	if err != nil {
		return nil, err
	}
	life, stop := lifetime(ctx)
	st := &stats{}
	f := newFetcher(be, st, o)
	pr, err := be.probe(life, f, o.BlockSize)
	if err != nil {
		stop(err)
		be.closeIdle()
		return nil, err
	}
	cfg := remoteConfig{life: life, stop: stop, name: be.display, size: pr.size, fetch: f, first: pr.body, st: st, o: o, alg: alg, expects: expects}
	if pr.ranges {
		r := newRemote(ctx, cfg)
		r.onClose = append(r.onClose, be.closeIdle)
		return r, nil
	}
	// No Range support: one stream, read once, in order.
	sf := &seqFetcher{f: f, be: be, body: pr.body, size: pr.size}
	if o.Scratch != "" {
		defer be.closeIdle()
		defer stop(nil)
		s := &seqStream{sf: sf, ctx: life}
		return spoolHashed(life, s, be.display, pr.size, o, alg, expects, st)
	}
	if pr.size < 0 {
		pr.body.Close()
		stop(nil)
		return nil, fmt.Errorf("fetch %s: the server supports no range requests and sends no Content-Length: %w", be.display, ErrNeedScratch)
	}
	cfg.fetch, cfg.first, cfg.seq = sf, nil, true
	r := newRemote(ctx, cfg)
	r.onClose = append(r.onClose, sf.close, be.closeIdle)
	return r, nil
}

// localSource is a local file or device. It is read directly; when a
// checksum is expected, a goroutine hashes it in order meanwhile.
type localSource struct {
	f    *os.File
	name string
	size int64

	cancel context.CancelFunc
	done   chan struct{} // closed when hashing ends; nil when not hashing
	d      Digests
	err    error
	once   sync.Once

	rangesCtx    context.Context
	rangesCancel context.CancelFunc
	ranges       sync.WaitGroup
}

func openLocal(ctx context.Context, p string, o *Options, alg, expects string) (Source, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", p, errors.Unwrap(err))
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open %s: %w", p, err)
	}
	if st.IsDir() {
		f.Close()
		return nil, fmt.Errorf("open %s: is a directory", p)
	}
	size := st.Size()
	if !st.Mode().IsRegular() {
		// Block devices report 0 in Stat; their end tells the size.
		if size, err = f.Seek(0, io.SeekEnd); err != nil {
			f.Close()
			return nil, fmt.Errorf("open %s: size: %w", p, err)
		}
	}
	s := &localSource{f: f, name: p, size: size}
	s.rangesCtx, s.rangesCancel = context.WithCancel(ctx)
	o.Progress.SetTotal(size)
	if alg != "" {
		hctx, cancel := context.WithCancel(ctx)
		s.cancel = cancel
		s.done = make(chan struct{})
		go s.hash(hctx, newHasher(alg, expects), o)
	}
	return s, nil
}

func (s *localSource) hash(ctx context.Context, h *hasher, o *Options) {
	defer close(s.done)
	buf := make([]byte, 4<<20)
	var off int64
	for off < s.size {
		if err := ctx.Err(); err != nil {
			s.err = err
			return
		}
		n, err := s.f.ReadAt(buf[:min(int64(len(buf)), s.size-off)], off)
		h.write(buf[:n])
		off += int64(n)
		o.Progress.Add(int64(n))
		if err != nil && !(err == io.EOF && off == s.size) {
			s.err = fmt.Errorf("hash %s: %w", s.name, err)
			return
		}
	}
	s.d.SHA256, s.d.Checksum, s.err = h.sums(s.name)
	s.d.BytesFetched = off
}

func (s *localSource) ReadAt(p []byte, off int64) (int, error) { return s.f.ReadAt(p, off) }
func (s *localSource) Name() string                            { return s.name }
func (s *localSource) Size() int64                             { return s.size }

// StartHash is a no-op: a local file is hashed by its own reads.
func (s *localSource) StartHash() {}

// DigestRange hashes [off, off+n) of the file with alg, reading it in a
// goroutine; Complete waits for it.
func (s *localSource) DigestRange(off, n int64, alg string) (func() (string, error), error) {
	h := newHash(alg)
	if h == nil || off < 0 || n < 0 || off+n > s.size {
		return nil, fmt.Errorf("digest %s range %d+%d with %q: invalid", s.name, off, n, alg)
	}
	var sum string
	var err error
	done := make(chan struct{})
	s.ranges.Add(1)
	go func() {
		defer s.ranges.Done()
		defer close(done)
		buf := make([]byte, 4<<20)
		for at := off; at < off+n; {
			if err = s.rangesCtx.Err(); err != nil {
				return
			}
			m, rerr := s.f.ReadAt(buf[:min(int64(len(buf)), off+n-at)], at)
			h.Write(buf[:m])
			at += int64(m)
			if rerr != nil && !(rerr == io.EOF && at == off+n) {
				err = fmt.Errorf("hash %s at %d: %w", s.name, at, rerr)
				return
			}
		}
		sum = hex.EncodeToString(h.Sum(nil))
	}()
	return func() (string, error) {
		select {
		case <-done:
			return sum, err
		default:
			return "", fmt.Errorf("digest %s range at %d: source not complete", s.name, off)
		}
	}, nil
}

func (s *localSource) Complete(ctx context.Context) (Digests, error) {
	waited := make(chan struct{})
	go func() { s.ranges.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-ctx.Done():
		return Digests{}, context.Cause(ctx)
	}
	if s.done == nil {
		return Digests{}, nil
	}
	select {
	case <-s.done:
		return s.d, s.err
	case <-ctx.Done():
		return Digests{}, context.Cause(ctx)
	}
}

func (s *localSource) Close() error {
	var err error
	s.once.Do(func() {
		if s.cancel != nil {
			s.cancel()
			<-s.done
		}
		s.rangesCancel()
		s.ranges.Wait()
		err = s.f.Close()
	})
	return err
}
