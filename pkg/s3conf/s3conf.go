// Package s3conf turns an S3 endpoint and credentials (flags, then the
// usual AWS_* variables) into minio-go options. Sources (importer),
// targets (uploader) and backups (lifecycle) share it, so an endpoint or
// a credential means the same thing everywhere.
package s3conf

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// DefaultEndpoint is AWS's.
const DefaultEndpoint = "s3.amazonaws.com"

// Config is where an S3 service is and who we are there.
type Config struct {
	// Endpoint is host[:port] or an http(s):// URL (http:// means no TLS).
	Endpoint string
	Region   string
	// PathStyle forces path-style bucket addressing (MinIO, Ceph RGW).
	PathStyle                          bool
	AccessKey, SecretKey, SessionToken string
}

// WithEnv fills empty fields from AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL,
// AWS_REGION, AWS_DEFAULT_REGION and, when no key was given at all,
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN (a key from
// flags is never paired with a secret from the environment).
func (c Config) WithEnv() Config {
	set := func(dst *string, names ...string) {
		for _, n := range names {
			if *dst == "" {
				*dst = os.Getenv(n)
			}
		}
	}
	set(&c.Endpoint, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
	set(&c.Region, "AWS_REGION", "AWS_DEFAULT_REGION")
	if c.AccessKey == "" && c.SecretKey == "" {
		set(&c.AccessKey, "AWS_ACCESS_KEY_ID")
		set(&c.SecretKey, "AWS_SECRET_ACCESS_KEY")
		set(&c.SessionToken, "AWS_SESSION_TOKEN")
	}
	return c
}

// Host returns the endpoint's host[:port] and whether it uses TLS.
func (c Config) Host() (host string, secure bool, err error) {
	host, secure = c.Endpoint, true
	if host == "" {
		host = DefaultEndpoint
	}
	if strings.Contains(host, "://") {
		u, perr := url.Parse(host)
		if perr != nil || (u.Scheme != "http" && u.Scheme != "https") || (u.Path != "" && u.Path != "/") || u.Host == "" {
			return "", false, fmt.Errorf("s3 endpoint %s: want host[:port] or http(s)://host[:port]", redact(host))
		}
		host, secure = u.Host, u.Scheme == "https"
	}
	return host, secure, nil
}

// Options returns minio-go's options for c (already WithEnv'd) and the
// endpoint host to pass to minio.New/NewCore. transport may be nil.
func (c Config) Options(transport http.RoundTripper) (string, *minio.Options, error) {
	host, secure, err := c.Host()
	if err != nil {
		return "", nil, err
	}
	lookup := minio.BucketLookupAuto
	if c.PathStyle {
		lookup = minio.BucketLookupPath
	}
	return host, &minio.Options{
		Creds:        credentials.NewStaticV4(c.AccessKey, c.SecretKey, c.SessionToken),
		Secure:       secure,
		Region:       c.Region,
		BucketLookup: lookup,
		Transport:    transport,
	}, nil
}

// redact drops userinfo and query from an endpoint written as a URL.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable endpoint)"
	}
	u.User, u.RawQuery = nil, ""
	return u.String()
}
