package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/minio/minio-go/v7"

	"github.com/hikube/ferry/pkg/s3conf"
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

// WithEnv fills empty fields from the AWS_* variables (s3conf's rules).
func (s S3Options) WithEnv() S3Options {
	c := s.conf().WithEnv()
	s.Endpoint, s.Region = c.Endpoint, c.Region
	s.AccessKey, s.SecretKey, s.SessionToken = c.AccessKey, c.SecretKey, c.SessionToken
	return s
}

func (s S3Options) conf() s3conf.Config {
	return s3conf.Config{Endpoint: s.Endpoint, Region: s.Region, PathStyle: s.PathStyle,
		AccessKey: s.AccessKey, SecretKey: s.SecretKey, SessionToken: s.SessionToken}
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
	host, mo, err := o.conf().WithEnv().Options(o.Transport)
	if err != nil {
		return nil, err
	}
	c, err := minio.New(host, mo)
	if err != nil {
		return nil, fmt.Errorf("s3 endpoint %s: %w", host, err)
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
