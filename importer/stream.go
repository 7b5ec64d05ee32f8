package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"sync"

	"github.com/minio/minio-go/v7"
)

// Stream is a source read once, in order: stdin, or any source read
// sequentially. Every byte is hashed as it passes; at the end of the data
// Read returns the checksum verdict instead of io.EOF: a *ChecksumError on
// mismatch (like go-containerregistry's verifying reader), so a consumer
// that stops at the first error never takes a bad stream as complete.
type Stream struct {
	name string
	size int64 // -1 when unknown

	// Either a reader hashed here...
	r      io.Reader
	closer io.Closer
	h      *hasher
	st     *stats
	local  bool // stdin or a file: count bytes here and name errors
	o      *Options
	// ...or a Source that hashes itself, read in order.
	src Source
	pos int64

	ctx  context.Context
	done bool
	d    Digests
	err  error // the verdict at the end, sticky
	once sync.Once
}

// OpenStream opens src for reading in order: "-" (stdin), a path, or a
// remote source (read with the parallel fetcher). It is hashed as it is
// read; the expected checksum, if any, is checked at the end of the data.
func OpenStream(ctx context.Context, src string, o Options) (*Stream, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	kind, loc, err := classify(src)
	if err != nil {
		return nil, err
	}
	alg, expects, err := expectedChecksum(ctx, src, &o)
	if err != nil {
		return nil, err
	}
	s := &Stream{ctx: ctx, size: -1, o: &o}
	switch kind {
	case kindStdin:
		s.name, s.r, s.closer, s.local = "stdin", os.Stdin, nil, true
		s.h, s.st = newHasher(alg, expects), &stats{}
		return s, nil
	case kindFile:
		f, err := os.Open(loc)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", loc, errors.Unwrap(err))
		}
		if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
			s.size = st.Size()
		}
		s.name, s.r, s.closer, s.local = loc, f, f, true
		s.h, s.st = newHasher(alg, expects), &stats{}
		o.Progress.SetTotal(s.size)
		return s, nil
	case kindHTTP:
		return openHTTPStream(ctx, loc, &o, alg, expects)
	}
	srcr, err := openS3(ctx, loc, &o, alg, expects)
	if err != nil {
		return nil, err
	}
	return streamOf(ctx, srcr), nil
}

// streamOf reads a Source in order.
func streamOf(ctx context.Context, src Source) *Stream {
	return &Stream{ctx: ctx, name: src.Name(), size: src.Size(), src: src}
}

func openHTTPStream(ctx context.Context, src string, o *Options, alg, expects string) (*Stream, error) {
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
	if pr.ranges {
		r := newRemote(ctx, remoteConfig{life: life, stop: stop, name: be.display, size: pr.size, fetch: f, first: pr.body, st: st, o: o, alg: alg, expects: expects})
		r.onClose = append(r.onClose, be.closeIdle)
		return streamOf(ctx, r), nil
	}
	ss := &seqStream{sf: &seqFetcher{f: f, be: be, body: pr.body, size: pr.size}, ctx: life}
	o.Progress.SetTotal(pr.size)
	return &Stream{ctx: ctx, name: be.display, size: pr.size, r: ss, closer: closerFunc(func() error {
		ss.Close()
		stop(ErrClosed)
		be.closeIdle()
		return nil
	}), h: newHasher(alg, expects), st: st, o: o}, nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// Name is the source's redacted name.
func (s *Stream) Name() string { return s.name }

// Size is the source's size, -1 when unknown (stdin).
func (s *Stream) Size() int64 { return s.size }

// Read reads the next bytes. At the end of the data it returns io.EOF
// only when the checksum (if any) matched; otherwise the verdict's error.
func (s *Stream) Read(p []byte) (int, error) {
	if s.done {
		if s.err != nil {
			return 0, s.err
		}
		return 0, io.EOF
	}
	if s.src != nil {
		if s.pos >= s.size {
			return 0, s.finish()
		}
		p = p[:min(int64(len(p)), s.size-s.pos)]
		n, err := s.src.ReadAt(p, s.pos)
		s.pos += int64(n)
		if err == io.EOF && s.pos == s.size {
			err = nil
		}
		return n, err
	}
	n, err := s.r.Read(p)
	if n > 0 {
		s.h.write(p[:n])
		if s.local {
			s.st.bytes.Add(int64(n))
		}
		s.o.Progress.Add(int64(n))
	}
	if err == io.EOF {
		if s.size >= 0 && s.h.n != s.size {
			s.done, s.err = true, fmt.Errorf("read %s: %w after %d of %d bytes", s.name, io.ErrUnexpectedEOF, s.h.n, s.size)
			return n, s.err
		}
		return n, s.finish()
	}
	if err != nil {
		if s.local {
			err = fmt.Errorf("read %s: %w", s.name, err)
		}
		s.done, s.err = true, err
		return n, s.err
	}
	return n, nil
}

// finish computes the verdict at the end of the data.
func (s *Stream) finish() error {
	s.done = true
	if s.src != nil {
		s.d, s.err = s.src.Complete(s.ctx)
	} else {
		s.d.SHA256, s.d.Checksum, s.err = s.h.sums(s.name)
		s.d.BytesFetched = s.st.bytes.Load()
		s.d.Requests = s.st.requests.Load()
		s.d.Retries = s.st.retries.Load()
	}
	if s.err != nil {
		return s.err
	}
	return io.EOF
}

// Complete reads whatever was not read yet (a decompressor may stop
// before trailing bytes) and returns the digests and the verdict.
func (s *Stream) Complete(ctx context.Context) (Digests, error) {
	if !s.done {
		if s.src != nil {
			d, err := s.src.Complete(ctx)
			s.done, s.d, s.err = true, d, err
		} else {
			buf := make([]byte, 1<<20)
			for !s.done {
				if err := ctx.Err(); err != nil {
					return Digests{}, context.Cause(ctx)
				}
				s.Read(buf)
			}
		}
	}
	return s.d, s.err
}

// Close releases the source.
func (s *Stream) Close() error {
	var err error
	s.once.Do(func() {
		if s.src != nil {
			err = s.src.Close()
		} else if s.closer != nil {
			err = s.closer.Close()
		}
	})
	return err
}

// maxSumsFile bounds a checksums file.
const maxSumsFile = 16 << 20

// fetchSmall reads a small file (a checksums file) from a URL or path.
// Headers and credentials go only to the source's own host.
func fetchSmall(ctx context.Context, loc, src string, o *Options) ([]byte, error) {
	kind, p, err := classify(loc)
	if err != nil {
		return nil, err
	}
	name := redactURL(loc)
	var rc io.ReadCloser
	switch kind {
	case kindStdin:
		return nil, fmt.Errorf("checksum file: stdin is taken by nothing here; give a URL or path")
	case kindFile:
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("checksum file: %w", err)
		}
		rc = f
	case kindS3:
		bucket, key, err := parseS3(p)
		if err != nil {
			return nil, err
		}
		core, closeIdle, err := newS3Core(o)
		if err != nil {
			return nil, err
		}
		defer closeIdle()
		f := newFetcher(nil, &stats{}, o)
		err = retryOp(ctx, f, func(ctx context.Context) error {
			body, _, _, err := core.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
			if err != nil {
				return s3Err(err)
			}
			rc = body
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("fetch %s: %w", name, err)
		}
	case kindHTTP:
		o2 := *o
		if !sameHost(loc, src) {
			o2.Headers, o2.Auth = nil, Auth{}
		}
		be, err := newHTTPBackend(p, &o2)
		if err != nil {
			return nil, err
		}
		defer be.closeIdle()
		f := newFetcher(be, &stats{}, &o2)
		err = retryOp(ctx, f, func(ctx context.Context) error {
			req, err := be.request(ctx, 0, -1, false)
			if err != nil {
				return err
			}
			resp, err := be.do(req)
			if err != nil {
				return err
			}
			if resp.StatusCode != 200 {
				return statusErr(resp)
			}
			rc = resp.Body
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("fetch %s: %w", name, err)
		}
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxSumsFile+1))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", name, stripURLError(err))
	}
	if len(data) > maxSumsFile {
		return nil, fmt.Errorf("fetch %s: a checksums file larger than %d MiB", name, maxSumsFile>>20)
	}
	return data, nil
}

func sameHost(a, b string) bool {
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	return err1 == nil && err2 == nil && ua.Host != "" && strings.EqualFold(ua.Host, ub.Host)
}
