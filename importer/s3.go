package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/minio/minio-go/v7"
)

// s3Backend reads ranges of one S3 object with minio.Core.GetObject:
// one request per range, no shared state, so ranges run in parallel
// (minio.Object.ReadAt serializes behind a mutex). Every request is pinned
// to the ETag seen by StatObject (If-Match).
type s3Backend struct {
	core      *minio.Core
	closeIdle func()
	bucket    string
	key       string
	display   string
	etag      string
	size      int64
}

func (b *s3Backend) String() string { return b.display }

// parseS3 splits s3://BUCKET/KEY.
func parseS3(src string) (bucket, key string, err error) {
	rest := src[len("s3://"):]
	bucket, key, _ = strings.Cut(rest, "/")
	if bucket == "" || key == "" {
		return "", "", fmt.Errorf("source %s: want s3://BUCKET/KEY", src)
	}
	return bucket, key, nil
}

// newS3Core builds a minio client from the options (and AWS_* variables).
// minio-go's own retries are turned off: the fetcher retries, resuming
// from the exact byte.
func newS3Core(o *Options) (*minio.Core, func(), error) {
	client, err := o.httpClient()
	if err != nil {
		return nil, nil, err
	}
	closeIdle := func() {}
	if o.HTTPClient == nil {
		closeIdle = client.CloseIdleConnections
	}
	tr := client.Transport
	if tr == nil {
		tr = http.DefaultTransport
	}
	host, mo, err := o.S3.conf().WithEnv().Options(tr)
	if err != nil {
		return nil, nil, err
	}
	// Retries are the fetcher's (with its permanent-error contract).
	mo.MaxRetries = 1
	core, err := minio.NewCore(host, mo)
	if err != nil {
		return nil, nil, fmt.Errorf("s3 endpoint %s: %w", host, err)
	}
	return core, closeIdle, nil
}

// s3Err classifies a minio error: 5xx, 429 and SlowDown are transient,
// other statuses permanent, network errors transient.
func s3Err(err error) error {
	var er minio.ErrorResponse
	if !errors.As(err, &er) || er.StatusCode == 0 {
		err = stripURLError(err)
		if isPermanent(err) {
			return permanent(err)
		}
		return err
	}
	msg := fmt.Sprintf("%d %s", er.StatusCode, http.StatusText(er.StatusCode))
	if er.Code != "" {
		msg += " (" + er.Code + ")"
	}
	if er.StatusCode == http.StatusPreconditionFailed {
		return permanent(fmt.Errorf("%w: %s: the ETag no longer matches", ErrSourceChanged, msg))
	}
	se := &statusError{code: er.StatusCode, status: msg}
	if transientStatus(er.StatusCode) || er.Code == "SlowDown" {
		return se
	}
	return permanent(se)
}

func newS3Backend(ctx context.Context, src string, o *Options, f *fetcher) (*s3Backend, error) {
	bucket, key, err := parseS3(src)
	if err != nil {
		return nil, err
	}
	core, closeIdle, err := newS3Core(o)
	if err != nil {
		return nil, err
	}
	b := &s3Backend{core: core, closeIdle: closeIdle, bucket: bucket, key: key, display: "s3://" + bucket + "/" + key}
	f.be = b
	err = retryOp(ctx, f, func(ctx context.Context) error {
		f.st.requests.Add(1)
		info, err := core.StatObject(ctx, bucket, key, minio.StatObjectOptions{})
		if err != nil {
			return s3Err(err)
		}
		b.etag, b.size = info.ETag, info.Size
		return nil
	})
	if err != nil {
		closeIdle()
		return nil, fmt.Errorf("stat %s: %w", b.display, err)
	}
	return b, nil
}

func (b *s3Backend) openRange(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	var opts minio.GetObjectOptions
	if err := opts.SetRange(off, off+n-1); err != nil {
		return nil, permanent(err)
	}
	if b.etag != "" {
		if err := opts.SetMatchETag(b.etag); err != nil {
			return nil, permanent(err)
		}
	}
	body, info, _, err := b.core.GetObject(ctx, b.bucket, b.key, opts)
	if err != nil {
		return nil, s3Err(err)
	}
	if b.etag != "" && info.ETag != "" && info.ETag != b.etag {
		body.Close()
		return nil, permanent(fmt.Errorf("%w: ETag was %s, now %s", ErrSourceChanged, b.etag, info.ETag))
	}
	if info.Size != n {
		body.Close()
		return nil, fmt.Errorf("got %d bytes for a %d-byte range", info.Size, n)
	}
	return body, nil
}

// retryOp runs op with the fetcher's retry policy (for requests that are
// not range reads: stat, small files).
func retryOp(ctx context.Context, f *fetcher, op func(context.Context) error) error {
	attempt := 0
	for {
		err := op(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if isPermanent(err) || attempt >= f.retries {
			if attempt > 0 {
				return fmt.Errorf("%w (after %d retries)", err, attempt)
			}
			return err
		}
		attempt++
		f.st.retries.Add(1)
		if err := sleepCtx(ctx, f.backoff(attempt, err)); err != nil {
			return err
		}
	}
}

func openS3(ctx context.Context, src string, o *Options, alg, expects string) (Source, error) {
	st := &stats{}
	f := newFetcher(nil, st, o)
	b, err := newS3Backend(ctx, src, o, f)
	if err != nil {
		return nil, err
	}
	r := newRemote(ctx, remoteConfig{name: b.display, size: b.size, fetch: f, st: st, o: o, alg: alg, expects: expects})
	r.onClose = append(r.onClose, b.closeIdle)
	return r, nil
}
