package importer

import (
	"context"
	"fmt"
	"io"
)

// seqFetcher reads a server without Range support: one GET for the whole
// object, read in order. When the transfer breaks, the object is fetched
// again from the start (pinned to the same validators) and the bytes
// already read are skipped: the only way to resume without ranges. The
// skipped bytes are counted in BytesFetched.
type seqFetcher struct {
	f    *fetcher
	be   *httpBackend
	body io.ReadCloser
	pos  int64
	size int64 // -1 when unknown
}

// read reads the next bytes of the stream; io.EOF at its end.
func (s *seqFetcher) read(ctx context.Context, p []byte) (int, error) {
	size := s.size
	attempt := 0
	for {
		var err error
		if s.body == nil {
			err = s.reopen(ctx)
		}
		if err == nil {
			var n int
			n, err = s.body.Read(p)
			s.pos += int64(n)
			s.f.st.bytes.Add(int64(n))
			if err == io.EOF && size >= 0 && s.pos < size {
				err = errShort
			}
			if n > 0 || err == nil {
				if err != nil && err != io.EOF {
					// Report the bytes now, the error on the next call.
					s.body.Close()
					s.body = nil
					err = nil
				}
				return n, err
			}
			if err == io.EOF {
				return 0, io.EOF
			}
			s.body.Close()
			s.body = nil
		}
		if ctx.Err() != nil {
			return 0, context.Cause(ctx)
		}
		if isPermanent(err) || attempt >= s.f.retries {
			suffix := ""
			if attempt > 0 {
				suffix = fmt.Sprintf(" (after %d retries)", attempt)
			}
			return 0, fmt.Errorf("fetch %s: at offset %d: %w%s", s.be, s.pos, err, suffix)
		}
		attempt++
		s.f.st.retries.Add(1)
		if err := sleepCtx(ctx, s.f.backoff(attempt, err)); err != nil {
			return 0, err
		}
	}
}

func (s *seqFetcher) reopen(ctx context.Context) error {
	rctx, cancel := context.WithCancel(ctx)
	wd := newWatchdog(s.f.stall, cancel)
	s.f.st.requests.Add(1)
	body, err := s.be.openWhole(rctx)
	if err != nil {
		wd.stop()
		if wd.fired.Load() && ctx.Err() == nil {
			return fmt.Errorf("%w (no response in %v)", errStalled, s.f.stall)
		}
		return err
	}
	wd.rc = body
	n, err := io.CopyN(io.Discard, wd, s.pos)
	s.f.st.bytes.Add(n)
	if err != nil {
		wd.Close()
		if err == io.EOF {
			err = errShort
		}
		return err
	}
	s.body = wd
	return nil
}

// fetch fills buf with the bytes at off, which must be where the stream
// is.
func (s *seqFetcher) fetch(ctx context.Context, off int64, buf []byte, _ io.ReadCloser, filled func(int)) error {
	if off != s.pos {
		return fmt.Errorf("fetch %s: internal error: sequential read at %d, stream at %d", s.be, off, s.pos)
	}
	for done := 0; done < len(buf); {
		n, err := s.read(ctx, buf[done:])
		done += n
		if n > 0 && filled != nil {
			filled(done)
		}
		if done == len(buf) {
			return nil
		}
		if err == io.EOF {
			return fmt.Errorf("fetch %s: at offset %d: %w: the body ended before its Content-Length", s.be, s.pos, errShort)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *seqFetcher) close() {
	if s.body != nil {
		s.body.Close()
		s.body = nil
	}
}

// seqStream is a seqFetcher as an io.Reader, for spooling and streams.
type seqStream struct {
	sf  *seqFetcher
	ctx context.Context
}

func (s *seqStream) Read(p []byte) (int, error) {
	if s.sf.size >= 0 {
		if s.sf.pos >= s.sf.size {
			return 0, io.EOF
		}
		p = p[:min(int64(len(p)), s.sf.size-s.sf.pos)]
	}
	return s.sf.read(s.ctx, p)
}

func (s *seqStream) Close() error {
	s.sf.close()
	return nil
}
