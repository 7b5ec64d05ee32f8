package importer

import (
	"fmt"
	"net/http"
	"net/textproto"
	"os"
	"strings"
	"time"

	"github.com/hikube/ferry/pkg/progress"
	"github.com/hikube/ferry/pkg/s3conf"
)

// Defaults. Four 8 MiB ranges in flight fill a fast link; a 96 MiB cache
// gives the converter's workers room to read out of order: measured on the
// bench corpus, 64 MiB re-fetched 3-5 % of compressed images (blocks
// evicted before the workers were done with them), 96 MiB 1.6-2.9 % at
// ~200 MiB peak RSS.
const (
	DefaultConnections = 4
	DefaultRetries     = 5
	DefaultBlockSize   = 8 << 20
	DefaultCacheSize   = 96 << 20
	DefaultTimeout     = 60 * time.Second

	minBlockSize = 64 << 10
	maxBlockSize = 64 << 20
	maxCacheSize = 4 << 30
	// metaChunk is the unit of the metadata side path: small reads far
	// ahead of the stream fetch the aligned 4 KiB chunks they cover (a
	// VMDK grain table is 2 KiB: a larger unit would multiply its cost).
	metaChunk = 4 << 10
)

// Options configure how a source is fetched. The zero value is usable:
// Validate fills in defaults.
type Options struct {
	// Connections is the number of parallel ranged requests (default 4).
	Connections int
	// Retries is how many times one request is retried on a transient
	// error (0: the default, 5; negative: none).
	Retries int
	// BlockSize is the unit of ranged requests, hashing and caching
	// (default 8 MiB; a multiple of 64 KiB between 64 KiB and 64 MiB).
	BlockSize int64
	// CacheSize bounds the block cache (default 96 MiB; at least
	// Connections+2 blocks). Memory use is about CacheSize + CacheSize/8.
	// It should exceed the converter's spread of reads in flight (workers
	// × chunk size) several times, or blocks are evicted before they are
	// read and fetched again.
	CacheSize int64
	// Timeout is how long a request may make no progress (no response
	// headers, no body bytes) before it is abandoned and retried
	// (default 60 s).
	Timeout time.Duration

	// Headers are added to every HTTP request to the source's host.
	Headers http.Header
	// Auth is HTTP basic or bearer authentication for the source's host.
	Auth Auth
	// CAFile is a PEM bundle trusted in addition to the system roots
	// (HTTPS and S3).
	CAFile string
	// Insecure skips TLS certificate verification.
	Insecure bool

	// Checksum is the expected digest of the source file as published,
	// "ALG:HEX" with ALG md5, sha1, sha256 or sha512.
	Checksum string
	// ChecksumURL names a SHA256SUMS-style file (http(s)://, s3://, file://
	// or a path) holding the expected digest under the source's file name.
	ChecksumURL string

	// S3 configures s3:// sources; empty fields come from AWS_* variables.
	S3 S3Options

	// Scratch is a directory where a source that cannot be read at random
	// (compressed wrapper, stdin, server without Range support) is spooled
	// when the image format needs random access. Empty: no spooling.
	Scratch string
	// Disk chooses the disk of an OVA archive holding several.
	Disk string
	// HoldHash makes a remote source wait for StartHash (or Complete)
	// before hashing: a caller that reads a header first (an OVA's tar
	// headers and manifest) may then still ask for the digest of a range
	// (DigestRange) that starts near the beginning. Reads work meanwhile
	// and read-ahead stops at the cache's size; a read beyond it ends
	// the hold (DigestRange may then be too late, and says so).
	HoldHash bool

	// Progress, if set, counts the source bytes fetched and hashed.
	Progress *progress.Counter
	// HTTPClient replaces the client built from CAFile, Insecure and
	// Connections (tests, custom transports).
	HTTPClient *http.Client

	// retryBase is the first backoff delay (tests shorten it).
	retryBase time.Duration
	// retryAfterMax caps a server's Retry-After (tests shorten it).
	retryAfterMax time.Duration
	// retries is Retries resolved (0 for none).
	retries int
}

// Auth is HTTP authentication: basic (Username and Password) or bearer
// (Token). Secrets may be read from files; they never appear in names or
// errors.
type Auth struct {
	Username     string
	Password     string
	PasswordFile string
	Token        string
	TokenFile    string
}

// AuthFromEnv reads FERRY_HTTP_USER, FERRY_HTTP_PASSWORD and
// FERRY_HTTP_TOKEN.
func AuthFromEnv() Auth {
	return Auth{
		Username: os.Getenv("FERRY_HTTP_USER"),
		Password: os.Getenv("FERRY_HTTP_PASSWORD"),
		Token:    os.Getenv("FERRY_HTTP_TOKEN"),
	}
}

// S3Options configure s3://BUCKET/KEY sources.
type S3Options struct {
	// Endpoint is host[:port] or a URL (http:// means no TLS). Default:
	// AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else s3.amazonaws.com.
	Endpoint string
	// Region (default AWS_REGION, AWS_DEFAULT_REGION).
	Region string
	// PathStyle forces path-style bucket addressing (MinIO, Ceph RGW).
	// Without it, path style is used for any endpoint but AWS's.
	PathStyle bool
	// Credentials (default AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
	// AWS_SESSION_TOKEN; anonymous when none).
	AccessKey, SecretKey, SessionToken string
}

// Validate checks the options and fills in defaults; it may be called
// again. Secrets named by files are read here, so a missing file fails
// before any request.
func (o *Options) Validate() error {
	if o.Connections == 0 {
		o.Connections = DefaultConnections
	}
	if o.Connections < 1 || o.Connections > 64 {
		return fmt.Errorf("connections: %d is out of range 1..64", o.Connections)
	}
	switch {
	case o.Retries == 0:
		o.retries = DefaultRetries
	case o.Retries < 0:
		o.retries = 0
	case o.Retries > 100:
		return fmt.Errorf("retries: %d is more than 100", o.Retries)
	default:
		o.retries = o.Retries
	}
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.BlockSize < minBlockSize || o.BlockSize > maxBlockSize || o.BlockSize%minBlockSize != 0 {
		return fmt.Errorf("block size: %d is not a multiple of 64 KiB between 64 KiB and 64 MiB", o.BlockSize)
	}
	if o.CacheSize == 0 {
		o.CacheSize = max(DefaultCacheSize, int64(o.Connections+2)*o.BlockSize)
	}
	if o.CacheSize < int64(o.Connections+2)*o.BlockSize || o.CacheSize > maxCacheSize {
		return fmt.Errorf("cache size: %d bytes is less than %d blocks of %d bytes (connections + 2) or more than 4 GiB",
			o.CacheSize, o.Connections+2, o.BlockSize)
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Timeout < 0 {
		return fmt.Errorf("timeout: negative")
	}
	if o.retryBase == 0 {
		o.retryBase = 250 * time.Millisecond
	}
	if o.retryAfterMax == 0 {
		o.retryAfterMax = 60 * time.Second
	}
	for k, vs := range o.Headers {
		if k == "" || strings.ContainsAny(k, " \t\r\n:") {
			return fmt.Errorf("header %q: invalid name", k)
		}
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n") {
				return fmt.Errorf("header %s: value holds a line break", textproto.CanonicalMIMEHeaderKey(k))
			}
		}
	}
	if err := o.Auth.load(); err != nil {
		return err
	}
	if o.Checksum != "" && o.ChecksumURL != "" {
		return fmt.Errorf("checksum: give either a checksum or a checksum URL, not both")
	}
	if o.Checksum != "" {
		if _, _, err := ParseChecksum(o.Checksum); err != nil {
			return err
		}
	}
	if o.Scratch != "" {
		st, err := os.Stat(o.Scratch)
		if err != nil {
			return fmt.Errorf("scratch: %w", err)
		}
		if !st.IsDir() {
			return fmt.Errorf("scratch: %s is not a directory", o.Scratch)
		}
	}
	return nil
}

// load reads secrets from files and checks that one kind is given.
func (a *Auth) load() error {
	read := func(file, what string) (string, error) {
		b, err := os.ReadFile(file)
		if err != nil {
			// The path is not secret; the content never appears.
			return "", fmt.Errorf("auth: %s file: %w", what, err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	var err error
	if a.PasswordFile != "" {
		if a.Password, err = read(a.PasswordFile, "password"); err != nil {
			return err
		}
		a.PasswordFile = ""
	}
	if a.TokenFile != "" {
		if a.Token, err = read(a.TokenFile, "token"); err != nil {
			return err
		}
		a.TokenFile = ""
	}
	if a.Token != "" && (a.Username != "" || a.Password != "") {
		return fmt.Errorf("auth: give either a bearer token or a user and password, not both")
	}
	if strings.ContainsAny(a.Token+a.Username+a.Password, "\r\n") {
		return fmt.Errorf("auth: credentials hold a line break")
	}
	return nil
}

// conf is the shared S3 configuration (AWS_* defaults applied by WithEnv).
func (s S3Options) conf() s3conf.Config {
	return s3conf.Config{Endpoint: s.Endpoint, Region: s.Region, PathStyle: s.PathStyle,
		AccessKey: s.AccessKey, SecretKey: s.SecretKey, SessionToken: s.SessionToken}
}
