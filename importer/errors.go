package importer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
)

var (
	// ErrSourceChanged: the object changed while it was being imported
	// (ETag or Last-Modified moved, size changed, or bytes read twice
	// differ). Permanent: the import must start over.
	ErrSourceChanged = errors.New("source changed during import")
	// ErrNeedScratch: the source cannot be read at random (a compressed
	// wrapper, stdin, a server without Range support) and the data asked
	// for is gone; Options.Scratch names a directory to spool it to.
	ErrNeedScratch = errors.New("source is not random-access: a scratch directory is needed (--scratch DIR)")
	// ErrClosed: the Source was used after Close.
	ErrClosed = errors.New("source closed")
)

// ChecksumError reports a digest that does not match the one expected.
type ChecksumError struct {
	Alg      string // md5, sha1, sha256, sha512
	Expected string // hex
	Actual   string // hex
	Source   string // redacted source name
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("checksum mismatch for %s: expected %s:%s, got %s:%s", e.Source, e.Alg, e.Expected, e.Alg, e.Actual)
}

// permanentError marks an error that retrying cannot fix. Backends return
// it for 4xx statuses, certificate failures, a changed object; the retry
// decorator fails at once on it and retries everything else.
type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }

// permanent wraps err so that the retry layer does not retry it.
func permanent(err error) error {
	if err == nil {
		return nil
	}
	var p *permanentError
	if errors.As(err, &p) {
		return err
	}
	return &permanentError{err}
}

// isPermanent tells whether err must not be retried: marked permanent,
// a checksum mismatch, a changed source, a context end, or a TLS
// verification failure (retrying a bad certificate only delays the error).
func isPermanent(err error) bool {
	var p *permanentError
	var ce *ChecksumError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	var cv *tls.CertificateVerificationError
	var rh tls.RecordHeaderError
	var dns *net.DNSError
	switch {
	case errors.As(err, &p), errors.As(err, &ce),
		errors.Is(err, ErrSourceChanged), errors.Is(err, ErrClosed), errors.Is(err, ErrNeedScratch),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ua), errors.As(err, &he), errors.As(err, &ci), errors.As(err, &cv), errors.As(err, &rh):
		return true
	case errors.As(err, &dns):
		return dns.IsNotFound
	}
	return false
}

// statusError is an HTTP (or S3) error status.
type statusError struct {
	code       int
	status     string // "503 Service Unavailable"
	retryAfter string // Retry-After header, for 429/503
}

func (e *statusError) Error() string { return e.status }

// transientStatus tells which statuses are worth retrying.
func transientStatus(code int) bool {
	return code == 408 || code == 425 || code == 429 || code >= 500
}

// sensitiveParam matches query parameter names whose values are
// credentials (pre-signed URLs, tokens, API keys).
func sensitiveParam(name string) bool {
	n := strings.ToLower(name)
	for _, s := range []string{"signature", "sig", "token", "credential", "key", "secret", "password", "passwd", "auth", "session", "code"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// redactURL returns u as a string fit for messages: the password of any
// user info and the values of credential-looking query parameters are
// replaced. A string that does not parse is returned up to its query.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		if i := strings.IndexAny(s, "?#"); i >= 0 {
			s = s[:i]
		}
		if i := strings.Index(s, "@"); i >= 0 {
			if j := strings.Index(s, "://"); j >= 0 && j < i {
				s = s[:j+3] + "REDACTED@" + s[i+1:]
			}
		}
		return s
	}
	return redactParsed(u)
}

func redactParsed(u *url.URL) string {
	c := *u
	if c.User != nil {
		if _, ok := c.User.Password(); ok {
			c.User = url.UserPassword(c.User.Username(), "REDACTED")
		}
	}
	if c.RawQuery != "" {
		q := c.Query()
		for k, vs := range q {
			if sensitiveParam(k) {
				for i := range vs {
					vs[i] = "REDACTED"
				}
			}
		}
		c.RawQuery = q.Encode()
	}
	c.Fragment = ""
	return c.String()
}

// stripURLError drops the *url.Error layer net/http adds: it repeats the
// URL (with its query), which we name ourselves, redacted.
func stripURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
