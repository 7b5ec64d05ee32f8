package uploader

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/hikube/ferry/pkg/s3conf"
)

// S3 user metadata ferry writes (sent as x-amz-meta-*).
const (
	MetaSHA256       = "Sha256"
	MetaSource       = "Ferry-Source"
	MetaSourceSHA256 = "Ferry-Source-Sha256"
	MetaVirtualSize  = "Ferry-Virtual-Size"
)

// S3Options describe an s3://BUCKET/KEY target.
type S3Options struct {
	Bucket, Key string
	// Endpoint is host[:port] or an http(s) URL (http:// means no TLS).
	// Empty fields come from AWS_ENDPOINT_URL_S3/AWS_ENDPOINT_URL,
	// AWS_REGION/AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID/
	// AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN; the endpoint defaults to
	// s3.amazonaws.com.
	Endpoint, Region                   string
	AccessKey, SecretKey, SessionToken string
	// PathStyle forces path-style bucket addressing.
	PathStyle bool
	// CAFile or Insecure for a private endpoint's TLS.
	CAFile   string
	Insecure bool
	// PartSize (default: 16 MiB, grown so the image fits 10,000 parts)
	// and Threads (default 4) bound memory to PartSize x Threads.
	PartSize int64
	Threads  int
	// Retries restarts a failed upload from zero (default 2; -1 none);
	// minio-go already retries single requests.
	Retries int
	// ContentType of the object (default application/octet-stream).
	ContentType string
	Progress    Progress
}

// ParseS3URL splits s3://BUCKET/KEY.
func ParseS3URL(s string) (bucket, key string, err error) {
	rest, ok := strings.CutPrefix(s, "s3://")
	if !ok {
		return "", "", fmt.Errorf("%s: not an s3:// URL", s)
	}
	bucket, key, _ = strings.Cut(rest, "/")
	if bucket == "" || key == "" || strings.HasSuffix(key, "/") {
		return "", "", fmt.Errorf("%s: want s3://BUCKET/KEY", s)
	}
	return bucket, key, nil
}

// Validate checks the options and fills defaults (environment included).
func (o *S3Options) Validate() error {
	if o.Bucket == "" || o.Key == "" {
		return errors.New("s3 target: want a bucket and a key")
	}
	c := o.conf().WithEnv()
	o.Endpoint, o.Region = c.Endpoint, c.Region
	o.AccessKey, o.SecretKey, o.SessionToken = c.AccessKey, c.SecretKey, c.SessionToken
	if o.Endpoint == "" {
		o.Endpoint = s3conf.DefaultEndpoint
	}
	if o.PartSize == 0 {
		o.PartSize = 16 << 20
	}
	if o.PartSize < 5<<20 || o.PartSize > 5<<30 {
		return fmt.Errorf("s3 part size %d: must be 5 MiB..5 GiB", o.PartSize)
	}
	if o.Threads == 0 {
		o.Threads = 4
	}
	if o.Threads < 1 || o.Threads > 64 {
		return fmt.Errorf("s3 threads %d: must be 1..64", o.Threads)
	}
	if o.Retries == 0 {
		o.Retries = 2
	} else if o.Retries < 0 {
		o.Retries = 0
	}
	if o.ContentType == "" {
		o.ContentType = "application/octet-stream"
	}
	if o.CAFile != "" && o.Insecure {
		return errors.New("s3: ca-file and insecure exclude each other")
	}
	return nil
}

func (o *S3Options) conf() s3conf.Config {
	return s3conf.Config{Endpoint: o.Endpoint, Region: o.Region, PathStyle: o.PathStyle,
		AccessKey: o.AccessKey, SecretKey: o.SecretKey, SessionToken: o.SessionToken}
}

// S3Result describes an uploaded object.
type S3Result struct {
	Target    string        `json:"target"`
	Bucket    string        `json:"bucket"`
	Key       string        `json:"key"`
	ETag      string        `json:"etag"`
	VersionID string        `json:"version_id,omitempty"`
	Size      int64         `json:"size"`
	RawSHA256 string        `json:"raw_sha256"`
	PartSize  int64         `json:"part_size"`
	Attempts  int           `json:"attempts"`
	Transfer  time.Duration `json:"transfer_ns"`
	Metadata  time.Duration `json:"metadata_ns"`
}

// S3Target uploads RAW images as S3 objects.
type S3Target struct {
	o  S3Options
	mc *minio.Client
}

// S3Option configures the S3 client.
type S3Option func(*s3Config)

type s3Config struct{ http *http.Client }

// WithS3HTTPClient uses c's transport for S3.
func WithS3HTTPClient(c *http.Client) S3Option { return func(s *s3Config) { s.http = c } }

// NewS3Target validates o and builds the client (no request yet).
func NewS3Target(o S3Options, opts ...S3Option) (*S3Target, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	cfg := s3Config{}
	for _, f := range opts {
		f(&cfg)
	}
	var tr http.RoundTripper
	if cfg.http != nil {
		tr = cfg.http.Transport
	} else if o.CAFile != "" || o.Insecure {
		tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.Insecure}
		if o.CAFile != "" {
			pem, err := os.ReadFile(o.CAFile)
			if err != nil {
				return nil, fmt.Errorf("s3 ca-file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("s3 ca-file %s: no PEM certificate", o.CAFile)
			}
			tlsCfg.RootCAs = pool
		}
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = tlsCfg
		tr = t
	}
	host, mo, err := o.conf().Options(tr)
	if err != nil {
		return nil, err
	}
	mc, err := minio.New(host, mo)
	if err != nil {
		return nil, fmt.Errorf("s3 endpoint %s: %w", host, err)
	}
	return &S3Target{o: o, mc: mc}, nil
}

// String is s3://BUCKET/KEY.
func (t *S3Target) String() string { return "s3://" + t.o.Bucket + "/" + t.o.Key }

// partSize grows the configured part size so the image fits in S3's
// 10,000 parts, in whole MiB.
func (t *S3Target) partSize(size int64) int64 {
	p := t.o.PartSize
	if need := (size + 9999) / 10000; need > p {
		p = (need + 1<<20 - 1) &^ (1<<20 - 1)
	}
	return p
}

// Upload streams img as a multipart upload with parallel parts, then
// records the RAW SHA-256 as user metadata.
//
// The digest is only known once the last part went out, and S3 metadata
// is fixed when a multipart upload starts. So the object is uploaded with
// what is known up front (source, virtual size), then copied onto itself
// with the digest added (REPLACE directive, guarded by the ETag just
// written). MinIO makes that a metadata-only update; AWS copies
// server-side (ComposeObject switches to a multipart copy past 5 GiB).
// The object is invisible until the multipart upload completes, so no
// partial image is ever readable; only the sha256 key appears a moment
// after the object. Uploading under a temporary key and copying to the
// final one would close that window at the price of a full server-side
// copy.
func (t *S3Target) Upload(ctx context.Context, img Image) (*S3Result, error) {
	fail := func(err error) error { return fmt.Errorf("upload %s: %w", t, err) }
	if err := img.validate(); err != nil {
		return nil, fail(err)
	}
	res := &S3Result{Target: t.String(), Bucket: t.o.Bucket, Key: t.o.Key, PartSize: t.partSize(img.VirtualSize)}
	meta := map[string]string{}
	if img.VirtualSize > 0 {
		meta[MetaVirtualSize] = strconv.FormatInt(img.VirtualSize, 10)
	}
	if img.SourceURL != "" {
		meta[MetaSource] = redactURL(img.SourceURL)
	}
	if img.SourceSHA256 != "" {
		meta[MetaSourceSHA256] = img.SourceSHA256
	}
	start := time.Now()
	var (
		info   minio.UploadInfo
		stream *rawStream
		err    error
	)
	for attempt := 0; ; attempt++ {
		stream = newRawStream(ctx, img.Open, CompressNone, t.o.Progress)
		res.Attempts++
		// Size -1 with ConcurrentStreamParts: Threads buffers of PartSize
		// are filled from the stream and uploaded in parallel.
		info, err = t.mc.PutObject(ctx, t.o.Bucket, t.o.Key, stream, -1, minio.PutObjectOptions{
			ContentType:           t.o.ContentType,
			UserMetadata:          meta,
			PartSize:              uint64(res.PartSize),
			NumThreads:            uint(t.o.Threads),
			ConcurrentStreamParts: true,
		})
		stream.Close()
		if serr := stream.sourceErr(); serr != nil {
			// minio-go aborted the multipart upload; a Close-time
			// verification failure comes after completion: remove it.
			if err == nil {
				t.mc.RemoveObject(context.WithoutCancel(ctx), t.o.Bucket, t.o.Key, minio.RemoveObjectOptions{VersionID: info.VersionID})
			}
			return nil, fail(fmt.Errorf("source: %w", serr))
		}
		if err == nil && !stream.complete() {
			err = errors.New("upload ended before the source did")
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil || attempt >= t.o.Retries || !retryableS3(err) {
			return nil, fail(fmt.Errorf("PUT: %w", err))
		}
		stream.rewind()
		if err := sleepCtx(ctx, backoff(attempt)); err != nil {
			return nil, fail(err)
		}
	}
	res.Transfer = time.Since(start)
	res.Size, _ = stream.counts()
	if img.VirtualSize > 0 && res.Size != img.VirtualSize {
		return nil, fail(fmt.Errorf("sent %d bytes, the image has %d", res.Size, img.VirtualSize))
	}
	meta[MetaVirtualSize] = strconv.FormatInt(res.Size, 10)
	res.RawSHA256 = stream.sum()
	if s := img.sourceSHA256(); s != "" {
		meta[MetaSourceSHA256] = s
	}
	meta[MetaSHA256] = res.RawSHA256
	start = time.Now()
	dst := minio.CopyDestOptions{Bucket: t.o.Bucket, Object: t.o.Key, UserMetadata: meta, ReplaceMetadata: true}
	src := minio.CopySrcOptions{Bucket: t.o.Bucket, Object: t.o.Key, MatchETag: info.ETag}
	ci, err := t.mc.ComposeObject(ctx, dst, src)
	if err != nil {
		return nil, fail(fmt.Errorf("record sha256 metadata (copy onto itself): %w", err))
	}
	res.Metadata = time.Since(start)
	res.ETag, res.VersionID = ci.ETag, ci.VersionID
	return res, nil
}

// retryableS3: network errors and server-side (5xx, throttling) errors
// restart the upload; 4xx (credentials, bucket) do not.
func retryableS3(err error) bool {
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		return er.StatusCode >= 500 || er.StatusCode == http.StatusTooManyRequests || er.Code == "SlowDown"
	}
	return true
}
