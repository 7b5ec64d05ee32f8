package importer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
)

// httpBackend reads ranges of one URL, pinned to the validators (ETag,
// Last-Modified) and size seen by the first response: every later request
// carries If-Match / If-Unmodified-Since and If-Range, and every response
// is checked against them, so a changed object fails with
// ErrSourceChanged instead of mixing two versions.
type httpBackend struct {
	client  *http.Client
	own     bool   // the client is ours: close its idle connections at the end
	url     string // request URL, user info removed
	display string // redacted, for messages
	hdr     http.Header
	auth    Auth

	size    int64
	etag    string // as sent by the server, quotes included
	strong  bool   // etag is a strong validator (If-Match needs one)
	lastMod string
}

func (h *httpBackend) String() string { return h.display }

// newHTTPBackend parses the URL; credentials in its user info become basic
// auth unless Auth says otherwise.
func newHTTPBackend(raw string, o *Options) (*httpBackend, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", redactURL(raw), stripURLError(err))
	}
	if u.Host == "" {
		return nil, fmt.Errorf("source %s: no host", redactURL(raw))
	}
	h := &httpBackend{display: redactParsed(u), hdr: o.Headers, auth: o.Auth}
	if u.User != nil {
		if h.auth.Username == "" && h.auth.Token == "" {
			h.auth.Username = u.User.Username()
			h.auth.Password, _ = u.User.Password()
		}
		c := *u
		c.User = nil
		u = &c
	}
	h.url = u.String()
	h.client, err = o.httpClient()
	if err != nil {
		return nil, err
	}
	h.own = o.HTTPClient == nil
	return h, nil
}

// closeIdle closes the keep-alive connections of a client made for this
// source, which would otherwise linger after it.
func (h *httpBackend) closeIdle() {
	if h.own {
		h.client.CloseIdleConnections()
	}
}

// httpClient builds the client: HTTP/1.1 so that each ranged request gets
// its own TCP connection (HTTP/2 would multiplex them onto one, whose
// window then bounds the whole transfer), no transparent gzip (bytes must
// be the file's), TLS from CAFile and Insecure. No overall timeout: the
// watchdog aborts requests that stall.
func (o *Options) httpClient() (*http.Client, error) {
	if o.HTTPClient != nil {
		return o.HTTPClient, nil
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ForceAttemptHTTP2 = false
	tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	tr.MaxIdleConnsPerHost = o.Connections + 4
	tr.DisableCompression = true
	tr.ReadBufferSize = 256 << 10
	cfg, err := o.tlsConfig()
	if err != nil {
		return nil, err
	}
	tr.TLSClientConfig = cfg
	return &http.Client{Transport: tr}, nil
}

func (o *Options) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.Insecure}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca file %s: no PEM certificate found", o.CAFile)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// request builds a GET for [off, off+n), or the whole object when n < 0.
// pinned adds the preconditions that make a changed object fail.
func (h *httpBackend) request(ctx context.Context, off, n int64, pinned bool) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return nil, permanent(stripURLError(err))
	}
	for k, vs := range h.hdr {
		req.Header[http.CanonicalHeaderKey(k)] = vs
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "ferry")
	}
	req.Header.Set("Accept-Encoding", "identity")
	switch {
	case h.auth.Token != "":
		req.Header.Set("Authorization", "Bearer "+h.auth.Token)
	case h.auth.Username != "" || h.auth.Password != "":
		req.SetBasicAuth(h.auth.Username, h.auth.Password)
	}
	if n >= 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	}
	if pinned {
		switch {
		case h.etag != "" && h.strong:
			req.Header.Set("If-Match", h.etag)
			if n >= 0 {
				req.Header.Set("If-Range", h.etag)
			}
		case h.lastMod != "":
			req.Header.Set("If-Unmodified-Since", h.lastMod)
			if n >= 0 {
				req.Header.Set("If-Range", h.lastMod)
			}
		}
	}
	return req, nil
}

// do sends req and turns transport errors into transient or permanent
// ones.
func (h *httpBackend) do(req *http.Request) (*http.Response, error) {
	resp, err := h.client.Do(req)
	if err != nil {
		err = stripURLError(err)
		if isPermanent(err) {
			return nil, permanent(err)
		}
		return nil, err
	}
	return resp, nil
}

// statusErr closes resp and returns its status as an error, permanent
// unless the status is worth retrying.
func statusErr(resp *http.Response) error {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	se := &statusError{code: resp.StatusCode, status: resp.Status, retryAfter: resp.Header.Get("Retry-After")}
	if se.status == "" {
		se.status = strconv.Itoa(resp.StatusCode)
	}
	if transientStatus(resp.StatusCode) {
		return se
	}
	return permanent(se)
}

func discard(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// checkValidators compares a response's validators with the pinned ones.
func (h *httpBackend) checkValidators(resp *http.Response) error {
	if et := resp.Header.Get("ETag"); h.etag != "" && et != "" && et != h.etag {
		return permanent(fmt.Errorf("%w: ETag was %s, now %s", ErrSourceChanged, h.etag, et))
	}
	if lm := resp.Header.Get("Last-Modified"); h.etag == "" && h.lastMod != "" && lm != "" && lm != h.lastMod {
		return permanent(fmt.Errorf("%w: Last-Modified was %s, now %s", ErrSourceChanged, h.lastMod, lm))
	}
	return nil
}

// parseContentRange reads "bytes FIRST-LAST/TOTAL" (TOTAL may be "*", -1)
// or "bytes */TOTAL" (first = last = -1).
func parseContentRange(s string) (first, last, total int64, err error) {
	bad := fmt.Errorf("bad Content-Range %q", s)
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, 0, 0, bad
	}
	r, t, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, bad
	}
	total = -1
	if t != "*" {
		if total, err = strconv.ParseInt(t, 10, 64); err != nil || total < 0 {
			return 0, 0, 0, bad
		}
	}
	if r == "*" {
		return -1, -1, total, nil
	}
	a, b, ok := strings.Cut(r, "-")
	if !ok {
		return 0, 0, 0, bad
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || first < 0 || last < first || (total >= 0 && last >= total) {
		return 0, 0, 0, bad
	}
	return first, last, total, nil
}

func (h *httpBackend) openRange(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	req, err := h.request(ctx, off, n, true)
	if err != nil {
		return nil, err
	}
	resp, err := h.do(req)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if err := h.checkValidators(resp); err != nil {
			discard(resp)
			return nil, err
		}
		first, last, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil {
			discard(resp)
			return nil, permanent(err)
		}
		if total >= 0 && total != h.size {
			discard(resp)
			return nil, permanent(fmt.Errorf("%w: size was %d, now %d", ErrSourceChanged, h.size, total))
		}
		if first != off || last != off+n-1 {
			discard(resp)
			return nil, permanent(fmt.Errorf("server sent range %d-%d for %d-%d", first, last, off, off+n-1))
		}
		if resp.ContentLength >= 0 && resp.ContentLength != n {
			// A proxy or server glitch: worth another try.
			discard(resp)
			return nil, fmt.Errorf("Content-Length %d for a %d-byte range", resp.ContentLength, n)
		}
		return resp.Body, nil
	case http.StatusOK:
		// The server ignored Range: If-Range found the object changed, or
		// ranges stopped working.
		err := h.checkValidators(resp)
		if err == nil && resp.ContentLength >= 0 && resp.ContentLength != h.size {
			err = permanent(fmt.Errorf("%w: size was %d, now %d", ErrSourceChanged, h.size, resp.ContentLength))
		}
		if err == nil {
			err = permanent(errors.New("server ignored the Range request (200 OK with the whole object)"))
		}
		resp.Body.Close()
		return nil, err
	case http.StatusPreconditionFailed:
		discard(resp)
		return nil, permanent(fmt.Errorf("%w: %s (ETag %s, Last-Modified %s no longer match)", ErrSourceChanged, resp.Status, orNone(h.etag), orNone(h.lastMod)))
	case http.StatusRequestedRangeNotSatisfiable:
		discard(resp)
		return nil, permanent(fmt.Errorf("%w: %s (the object is smaller than %d bytes now)", ErrSourceChanged, resp.Status, h.size))
	}
	return nil, statusErr(resp)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// openWhole re-opens the whole object (servers without Range support),
// pinned to the first response's validators.
func (h *httpBackend) openWhole(ctx context.Context) (io.ReadCloser, error) {
	req, err := h.request(ctx, 0, -1, true)
	if err != nil {
		return nil, err
	}
	resp, err := h.do(req)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		if err := h.checkValidators(resp); err != nil {
			discard(resp)
			return nil, err
		}
		if resp.ContentLength >= 0 && h.size >= 0 && resp.ContentLength != h.size {
			discard(resp)
			return nil, permanent(fmt.Errorf("%w: size was %d, now %d", ErrSourceChanged, h.size, resp.ContentLength))
		}
		return resp.Body, nil
	case http.StatusPreconditionFailed:
		discard(resp)
		return nil, permanent(fmt.Errorf("%w: %s", ErrSourceChanged, resp.Status))
	}
	return nil, statusErr(resp)
}

// probeResult is what the first request told.
type probeResult struct {
	size   int64 // -1 when unknown (no Range support, no Content-Length)
	ranges bool
	// body is the first block (ranges) or the whole object (no ranges),
	// already open; nil for an empty object.
	body io.ReadCloser
}

// probe makes the first request: a GET for the first block. A 206 tells
// the size and that ranges work, and its body is the first block, so the
// probe costs no extra round trip; a 200 means no Range support. It pins
// the validators it sees.
func (h *httpBackend) probe(ctx context.Context, f *fetcher, blockSize int64) (probeResult, error) {
	var res probeResult
	err := retryOp(ctx, f, func(ctx context.Context) error {
		var err error
		res, err = h.probeOnce(ctx, f, blockSize)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("fetch %s: %w", h, err)
	}
	return res, nil
}

func (h *httpBackend) probeOnce(ctx context.Context, f *fetcher, blockSize int64) (probeResult, error) {
	rctx, cancel := context.WithCancel(ctx)
	wd := newWatchdog(f.stall, cancel)
	req, err := h.request(rctx, 0, blockSize, false)
	if err != nil {
		wd.stop()
		return probeResult{}, err
	}
	f.st.requests.Add(1)
	resp, err := h.do(req)
	if err != nil {
		wd.stop()
		if wd.fired.Load() && ctx.Err() == nil {
			return probeResult{}, fmt.Errorf("%w (no response in %v)", errStalled, f.stall)
		}
		return probeResult{}, err
	}
	h.etag = resp.Header.Get("ETag")
	h.strong = h.etag != "" && !strings.HasPrefix(h.etag, "W/")
	h.lastMod = resp.Header.Get("Last-Modified")
	switch resp.StatusCode {
	case http.StatusPartialContent:
		first, last, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err == nil && (first != 0 || total < 0) {
			err = fmt.Errorf("unexpected Content-Range %q for the first block", resp.Header.Get("Content-Range"))
		}
		if err != nil {
			discard(resp)
			wd.stop()
			return probeResult{}, permanent(err)
		}
		h.size = total
		if want := min(blockSize, total); last+1 != want || (resp.ContentLength >= 0 && resp.ContentLength != want) {
			discard(resp)
			wd.stop()
			return probeResult{}, fmt.Errorf("first range: got %d bytes (Content-Length %d), want %d", last+1, resp.ContentLength, want)
		}
		wd.rc = resp.Body
		return probeResult{size: total, ranges: true, body: wd}, nil
	case http.StatusOK:
		h.size = resp.ContentLength
		wd.rc = resp.Body
		return probeResult{size: resp.ContentLength, ranges: false, body: wd}, nil
	case http.StatusRequestedRangeNotSatisfiable:
		// The only range a server refuses for bytes=0-N is on an empty
		// object.
		_, _, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		discard(resp)
		wd.stop()
		if err != nil || total != 0 {
			return probeResult{}, permanent(fmt.Errorf("%s for the first block (Content-Range %q)", resp.Status, resp.Header.Get("Content-Range")))
		}
		h.size = 0
		return probeResult{size: 0, ranges: true}, nil
	}
	wd.stop()
	return probeResult{}, statusErr(resp)
}
