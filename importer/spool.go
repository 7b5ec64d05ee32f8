package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
)

// spoolSource is a stream copied to an unlinked temporary file: the space
// goes back to the disk on Close, or when the process ends, even on a
// crash.
type spoolSource struct {
	f        *os.File
	name     string
	size     int64
	complete func(context.Context) (Digests, error)
	once     sync.Once
}

// Spool copies r (the stream of source name) to a temporary file in dir
// and returns it as a Source named name. It is bounded by the disk: a full
// disk fails with a clear error. The file is removed on Close. Complete
// reports the bytes spooled.
func Spool(ctx context.Context, r io.Reader, dir, name string) (Source, error) {
	return spool(ctx, r, dir, name, -1)
}

func spool(ctx context.Context, r io.Reader, dir, name string, hint int64) (*spoolSource, error) {
	if hint > 0 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err == nil {
			if free := int64(st.Bavail) * int64(st.Bsize); free < hint {
				return nil, fmt.Errorf("spool %s to %s: %d bytes free, %d needed", name, dir, free, hint)
			}
		}
	}
	f, err := os.CreateTemp(dir, "ferry-spool-*")
	if err != nil {
		return nil, fmt.Errorf("spool %s: %w", name, err)
	}
	os.Remove(f.Name())
	buf := make([]byte, 1<<20)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			f.Close()
			return nil, context.Cause(ctx)
		}
		m, rerr := io.ReadFull(r, buf)
		if m > 0 {
			if _, err := f.Write(buf[:m]); err != nil {
				f.Close()
				if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
					return nil, fmt.Errorf("spool %s to %s: the disk is full after %d bytes (%d MiB): %w", name, dir, n, n>>20, err)
				}
				return nil, fmt.Errorf("spool %s to %s: %w", name, dir, err)
			}
			n += int64(m)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			f.Close()
			return nil, rerr
		}
	}
	s := &spoolSource{f: f, name: name, size: n}
	s.complete = func(context.Context) (Digests, error) { return Digests{BytesFetched: n}, nil }
	return s, nil
}

func (s *spoolSource) ReadAt(p []byte, off int64) (int, error) { return s.f.ReadAt(p, off) }
func (s *spoolSource) Name() string                            { return s.name }
func (s *spoolSource) Size() int64                             { return s.size }
func (s *spoolSource) Complete(ctx context.Context) (Digests, error) {
	return s.complete(ctx)
}

func (s *spoolSource) Close() error {
	var err error
	s.once.Do(func() { err = s.f.Close() })
	return err
}

// hashingReader hashes what it reads.
type hashingReader struct {
	r io.Reader
	h *hasher
	o *Options
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.write(p[:n])
	h.o.Progress.Add(int64(n))
	return n, err
}

// spoolHashed spools a stream that nothing else hashes (a server without
// Range support), hashing it on the way; Complete checks the checksum.
func spoolHashed(ctx context.Context, r io.ReadCloser, name string, size int64, o *Options, alg, expects string, st *stats) (Source, error) {
	defer r.Close()
	h := newHasher(alg, expects)
	o.Progress.SetTotal(size)
	sp, err := spool(ctx, &hashingReader{r: r, h: h, o: o}, o.Scratch, name, size)
	if err != nil {
		return nil, err
	}
	if size >= 0 && sp.size != size {
		sp.Close()
		return nil, fmt.Errorf("fetch %s: %w after %d of %d bytes", name, io.ErrUnexpectedEOF, sp.size, size)
	}
	sha, sum, verr := h.sums(name)
	sp.complete = func(context.Context) (Digests, error) {
		return Digests{SHA256: sha, Checksum: sum, BytesFetched: st.bytes.Load(), Requests: st.requests.Load(), Retries: st.retries.Load()}, verr
	}
	return sp, nil
}
