package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Options configure the backup bucket's endpoint and credentials; empty
// fields come from the AWS_* variables (as for `ferry import s3://…`).
type S3Options struct {
	// Endpoint is host[:port] or a URL (http:// means no TLS). Default:
	// AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else s3.amazonaws.com.
	Endpoint string
	Region   string
	// PathStyle forces path-style addressing (MinIO, Ceph RGW); any
	// endpoint but AWS's uses it anyway.
	PathStyle                          bool
	AccessKey, SecretKey, SessionToken string
	// Transport replaces the HTTP transport (tests, custom CAs).
	Transport http.RoundTripper
}

// WithEnv fills empty fields from the environment.
func (s S3Options) WithEnv() S3Options {
	set := func(p *string, names ...string) {
		for _, n := range names {
			if *p == "" {
				*p = os.Getenv(n)
			}
		}
	}
	set(&s.Endpoint, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
	set(&s.Region, "AWS_REGION", "AWS_DEFAULT_REGION")
	set(&s.AccessKey, "AWS_ACCESS_KEY_ID")
	set(&s.SecretKey, "AWS_SECRET_ACCESS_KEY")
	set(&s.SessionToken, "AWS_SESSION_TOKEN")
	return s
}

// S3Location is s3://BUCKET/PREFIX.
type S3Location struct{ Bucket, Prefix string }

func (l S3Location) String() string {
	if l.Prefix == "" {
		return "s3://" + l.Bucket
	}
	return "s3://" + l.Bucket + "/" + l.Prefix
}

// Join appends path elements to the prefix.
func (l S3Location) Join(elem ...string) S3Location {
	parts := []string{}
	if l.Prefix != "" {
		parts = append(parts, l.Prefix)
	}
	parts = append(parts, elem...)
	return S3Location{Bucket: l.Bucket, Prefix: strings.Join(parts, "/")}
}

// ParseS3 parses s3://BUCKET[/PREFIX] (a trailing slash is dropped).
func ParseS3(s string) (S3Location, error) {
	rest, ok := strings.CutPrefix(s, "s3://")
	if !ok {
		return S3Location{}, fmt.Errorf("%q: want s3://BUCKET/PREFIX", s)
	}
	bucket, prefix, _ := strings.Cut(rest, "/")
	if bucket == "" {
		return S3Location{}, fmt.Errorf("%q: no bucket", s)
	}
	return S3Location{Bucket: bucket, Prefix: strings.Trim(prefix, "/")}, nil
}

// objectStore is the little of S3 backups need.
type objectStore struct{ c *minio.Client }

func newObjectStore(o S3Options) (*objectStore, error) {
	s := o.WithEnv()
	endpoint, secure := s.Endpoint, true
	if endpoint == "" {
		endpoint = "s3.amazonaws.com"
	}
	if strings.Contains(endpoint, "://") {
		u, err := url.Parse(endpoint)
		if err != nil {
			return nil, fmt.Errorf("s3 endpoint: %w", err)
		}
		switch u.Scheme {
		case "http":
			secure = false
		case "https":
		default:
			return nil, fmt.Errorf("s3 endpoint %s: scheme must be http or https", u.Host)
		}
		endpoint = u.Host
	}
	lookup := minio.BucketLookupAuto
	if s.PathStyle {
		lookup = minio.BucketLookupPath
	}
	c, err := minio.New(endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(s.AccessKey, s.SecretKey, s.SessionToken),
		Secure:       secure,
		Region:       s.Region,
		BucketLookup: lookup,
		Transport:    s.Transport,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 endpoint %s: %w", endpoint, err)
	}
	return &objectStore{c: c}, nil
}

// streamPartSize bounds memory when the size is unknown (minio-go would
// otherwise size parts for 5 TiB: 512 MiB buffers).
const streamPartSize = 64 << 20

// put streams r to bucket/key; size may be -1. A failed upload is aborted
// by minio-go: no partial object appears.
func (s *objectStore) put(ctx context.Context, bucket, key string, r io.Reader, size int64, contentType string) error {
	opts := minio.PutObjectOptions{ContentType: contentType, DisableContentSha256: true}
	if size < 0 {
		opts.PartSize = streamPartSize
	}
	_, err := s.c.PutObject(ctx, bucket, key, r, size, opts)
	return err
}

func (s *objectStore) get(ctx context.Context, bucket, key string, max int64) ([]byte, error) {
	obj, err := s.c.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	b, err := io.ReadAll(io.LimitReader(obj, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: larger than %d bytes", key, max)
	}
	return b, nil
}

// list returns the keys under prefix (recursive).
func (s *objectStore) list(ctx context.Context, bucket, prefix string) ([]string, error) {
	var keys []string
	for o := range s.c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			return nil, o.Err
		}
		keys = append(keys, o.Key)
	}
	return keys, nil
}

func (s *objectStore) remove(ctx context.Context, bucket string, keys []string) error {
	var errs []error
	for _, k := range keys {
		if err := s.c.RemoveObject(ctx, bucket, k, minio.RemoveObjectOptions{}); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", k, err))
		}
	}
	return errors.Join(errs...)
}
