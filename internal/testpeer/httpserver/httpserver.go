// Package httpserver is a real HTTP file server for tests and benchmarks:
// it serves files from a directory with Range support (http.ServeContent)
// behind a fault-injection layer the test controls per path: dropped
// connections, error statuses with Retry-After, slow or stalled bodies, no
// Range support, wrong Content-Length, objects that change mid-transfer,
// redirects, basic/bearer auth, TLS. It counts requests and body bytes
// served. It listens on 127.0.0.1 only.
package httpserver

import (
	"crypto/subtle"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Fault is what a rule does to the requests it matches.
type Fault struct {
	// After lets the first After matching requests through untouched.
	After int
	// Times is how many requests (after After) the fault hits; 0 means
	// every one.
	Times int

	// Status answers with this status (503, 429, 404, 403, ...).
	Status int
	// RetryAfter is sent with Status.
	RetryAfter string
	// Delay sleeps before answering.
	Delay time.Duration
	// DropAfter closes the connection after this many body bytes
	// (Drop with DropAfter 0: right after the headers).
	Drop      bool
	DropAfter int64
	// Rate caps the body at this many bytes per second (slow server).
	Rate int64
	// Stall sends the headers and StallBytes bytes, then nothing until the
	// client gives up (or 30 s pass).
	Stall      bool
	StallBytes int64
	// NoRange ignores Range: 200 with the whole body, no Accept-Ranges.
	NoRange bool
	// WrongLength adds this to the Content-Length announced (the body is
	// unchanged): positive announces more than is sent.
	WrongLength int64
	// Change makes the object change from this request on: different
	// bytes (same size), new ETag and Last-Modified. Permanent.
	Change bool
	// IgnoreConditions drops If-Match, If-Range, If-Unmodified-Since and
	// If-None-Match (a server or proxy that does not honour them).
	IgnoreConditions bool
	// NoValidators sends neither ETag nor Last-Modified.
	NoValidators bool
}

type rule struct {
	f    Fault
	seen int
	hit  int
}

// Request is one logged request.
type Request struct {
	Method, Path, Range string
	IfMatch, IfRange    string
	Status              int
}

// Handler serves a directory with faults. Safe for concurrent use.
type Handler struct {
	dir string

	mu        sync.Mutex
	rules     map[string][]*rule // by path; "" for every path
	versions  map[string]int
	redirects map[string]redirect
	user      string
	pass      string
	token     string
	log       []Request

	requests atomic.Int64
	bytes    atomic.Int64
	// StallMax bounds a Stall fault.
	StallMax time.Duration
}

type redirect struct {
	to   string
	code int
}

// NewHandler serves the files of dir.
func NewHandler(dir string) *Handler {
	return &Handler{dir: dir, rules: map[string][]*rule{}, versions: map[string]int{}, redirects: map[string]redirect{}, StallMax: 30 * time.Second}
}

// Fault adds a rule for urlPath ("" for every path). A request gets every
// rule still active, merged.
func (h *Handler) Fault(urlPath string, f Fault) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rules[urlPath] = append(h.rules[urlPath], &rule{f: f})
}

// ClearFaults removes every rule.
func (h *Handler) ClearFaults() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rules = map[string][]*rule{}
}

// Redirect answers requests for from with a redirect (code 301, 302, 307,
// 308) to to (a path or a URL).
func (h *Handler) Redirect(from, to string, code int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.redirects[from] = redirect{to, code}
}

// RequireBasic requires basic auth.
func (h *Handler) RequireBasic(user, pass string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.user, h.pass = user, pass
}

// RequireBearer requires a bearer token.
func (h *Handler) RequireBearer(token string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.token = token
}

// Requests is the number of requests received.
func (h *Handler) Requests() int64 { return h.requests.Load() }

// BytesServed is the number of body bytes written.
func (h *Handler) BytesServed() int64 { return h.bytes.Load() }

// ResetStats zeroes the counters and the log.
func (h *Handler) ResetStats() {
	h.requests.Store(0)
	h.bytes.Store(0)
	h.mu.Lock()
	h.log = nil
	h.mu.Unlock()
}

// Log returns the requests received (the first 100000).
func (h *Handler) Log() []Request {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Request(nil), h.log...)
}

// match returns the fault for a request: every active rule for the path
// and for all paths, merged; each consumes one of its Times.
func (h *Handler) match(p string) Fault {
	var f Fault
	for _, key := range []string{p, ""} {
		for _, r := range h.rules[key] {
			if r.seen < r.f.After {
				r.seen++
				continue
			}
			if r.f.Times != 0 && r.hit >= r.f.Times {
				continue
			}
			r.hit++
			f = merge(f, r.f)
		}
	}
	return f
}

// merge combines two faults: flags add up, the first non-zero value wins.
func merge(a, b Fault) Fault {
	or := func(x, y int64) int64 {
		if x != 0 {
			return x
		}
		return y
	}
	if a.Status == 0 {
		a.Status, a.RetryAfter = b.Status, b.RetryAfter
	}
	if a.Delay == 0 {
		a.Delay = b.Delay
	}
	if !a.Drop {
		a.Drop, a.DropAfter = b.Drop, b.DropAfter
	}
	a.Rate = or(a.Rate, b.Rate)
	if !a.Stall {
		a.Stall, a.StallBytes = b.Stall, b.StallBytes
	}
	a.WrongLength = or(a.WrongLength, b.WrongLength)
	a.NoRange = a.NoRange || b.NoRange
	a.Change = a.Change || b.Change
	a.IgnoreConditions = a.IgnoreConditions || b.IgnoreConditions
	a.NoValidators = a.NoValidators || b.NoValidators
	return a
}

// countingWriter counts body bytes and applies body faults.
type countingWriter struct {
	http.ResponseWriter
	h       *Handler
	f       Fault
	n       int64
	status  int
	started time.Time
}

func (w *countingWriter) WriteHeader(code int) {
	w.status = code
	if w.f.WrongLength != 0 {
		if cl, err := strconv.ParseInt(w.Header().Get("Content-Length"), 10, 64); err == nil {
			w.Header().Set("Content-Length", strconv.FormatInt(cl+w.f.WrongLength, 10))
		}
	}
	w.ResponseWriter.WriteHeader(code)
	if w.f.Drop && w.f.DropAfter == 0 {
		w.abort()
	}
}

func (w *countingWriter) abort() {
	if fl, ok := w.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
	// Aborting closes the connection without finishing the response.
	panic(http.ErrAbortHandler)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	written := 0
	for len(p) > 0 {
		chunk := p
		if w.f.Rate > 0 && len(chunk) > 16<<10 {
			chunk = chunk[:16<<10]
		}
		if w.f.Drop && w.n+int64(len(chunk)) >= w.f.DropAfter {
			chunk = chunk[:w.f.DropAfter-w.n]
			m, _ := w.ResponseWriter.Write(chunk)
			w.n += int64(m)
			w.h.bytes.Add(int64(m))
			w.abort()
		}
		if w.f.Stall && w.n+int64(len(chunk)) >= w.f.StallBytes {
			chunk = chunk[:w.f.StallBytes-w.n]
			m, _ := w.ResponseWriter.Write(chunk)
			w.n += int64(m)
			w.h.bytes.Add(int64(m))
			if fl, ok := w.ResponseWriter.(http.Flusher); ok {
				fl.Flush()
			}
			return written + m, errStalled
		}
		m, err := w.ResponseWriter.Write(chunk)
		w.n += int64(m)
		w.h.bytes.Add(int64(m))
		written += m
		if err != nil {
			return written, err
		}
		p = p[len(chunk):]
		if w.f.Rate > 0 {
			// Sleep until the bytes sent fit the rate.
			due := time.Duration(float64(w.n) / float64(w.f.Rate) * float64(time.Second))
			if d := due - time.Since(w.started); d > 0 {
				time.Sleep(d)
			}
		}
	}
	return written, nil
}

// ReadFrom hands the body to the connection (sendfile for a file, as
// nginx would) when no fault has to see the bytes: on this 2-core machine
// a server copying through user space takes CPU from the clients it is
// measured against.
func (w *countingWriter) ReadFrom(src io.Reader) (int64, error) {
	rf, ok := w.ResponseWriter.(io.ReaderFrom)
	if !ok || w.f.Drop || w.f.Stall || w.f.Rate > 0 {
		return io.Copy(writerOnly{w}, src)
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	n, err := rf.ReadFrom(src)
	w.n += n
	w.h.bytes.Add(n)
	return n, err
}

// writerOnly hides ReadFrom from io.Copy.
type writerOnly struct{ io.Writer }

func (w *countingWriter) Flush() {
	if fl, ok := w.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
}

var errStalled = fmt.Errorf("stalled by fault")

// changed is a file as it reads once version v of the object: every
// 4096th byte is altered, so the size stays and the bytes differ.
type changed struct {
	rs  io.ReadSeeker
	pos int64
	v   byte
}

func (c *changed) Read(p []byte) (int, error) {
	n, err := c.rs.Read(p)
	for i := 0; i < n; i++ {
		if (c.pos+int64(i))%4096 == 0 {
			p[i] ^= c.v
		}
	}
	c.pos += int64(n)
	return n, err
}

func (c *changed) Seek(off int64, whence int) (int64, error) {
	p, err := c.rs.Seek(off, whence)
	c.pos = p
	return p, err
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.requests.Add(1)
	p := path.Clean("/" + r.URL.Path)
	h.mu.Lock()
	f := h.match(p)
	if f.Change {
		h.versions[p]++
	}
	version := h.versions[p]
	rd, isRedirect := h.redirects[p]
	user, pass, token := h.user, h.pass, h.token
	entry := len(h.log)
	if entry < 100000 {
		h.log = append(h.log, Request{Method: r.Method, Path: p, Range: r.Header.Get("Range"), IfMatch: r.Header.Get("If-Match"), IfRange: r.Header.Get("If-Range")})
	}
	h.mu.Unlock()
	cw := &countingWriter{ResponseWriter: w, h: h, f: f, started: time.Now()}
	defer func() {
		h.mu.Lock()
		if entry < len(h.log) {
			h.log[entry].Status = cw.status
		}
		h.mu.Unlock()
	}()

	if token != "" && !secureEq(r.Header.Get("Authorization"), "Bearer "+token) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="ferry-test"`)
		http.Error(cw, "unauthorized", http.StatusUnauthorized)
		return
	}
	if user != "" {
		u, pw, ok := r.BasicAuth()
		if !ok || !secureEq(u, user) || !secureEq(pw, pass) {
			w.Header().Set("WWW-Authenticate", `Basic realm="ferry-test"`)
			http.Error(cw, "unauthorized", http.StatusUnauthorized)
			return
		}
	}
	if f.Delay > 0 {
		select {
		case <-time.After(f.Delay):
		case <-r.Context().Done():
			return
		}
	}
	if isRedirect {
		http.Redirect(cw, r, rd.to, rd.code)
		return
	}
	if f.Status != 0 {
		if f.RetryAfter != "" {
			w.Header().Set("Retry-After", f.RetryAfter)
		}
		http.Error(cw, http.StatusText(f.Status), f.Status)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(cw, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	file, err := os.Open(filepath.Join(h.dir, filepath.FromSlash(p)))
	if err != nil {
		http.Error(cw, "not found", http.StatusNotFound)
		return
	}
	defer file.Close()
	st, err := file.Stat()
	if err != nil || st.IsDir() {
		http.Error(cw, "not found", http.StatusNotFound)
		return
	}
	var content io.ReadSeeker = file
	mod := st.ModTime().Add(time.Duration(version) * time.Second)
	if version > 0 {
		content = &changed{rs: file, v: byte(version*37) | 1}
	}
	if f.IgnoreConditions {
		for _, k := range []string{"If-Match", "If-Range", "If-Unmodified-Since", "If-None-Match"} {
			r.Header.Del(k)
		}
	}
	if f.NoValidators {
		mod = time.Time{}
	} else {
		// Strong, like nginx's: size and mtime, plus the version.
		w.Header().Set("ETag", fmt.Sprintf(`"%x-%x-%d"`, st.Size(), st.ModTime().UnixNano(), version))
	}
	if f.Stall {
		defer func() {
			if e := recover(); e != nil && e != errStalled {
				panic(e)
			}
			select {
			case <-r.Context().Done():
			case <-time.After(h.StallMax):
			}
		}()
	}
	if f.NoRange {
		if !mod.IsZero() {
			w.Header().Set("Last-Modified", mod.UTC().Format(http.TimeFormat))
		}
		w.Header().Set("Content-Length", strconv.FormatInt(st.Size(), 10))
		w.Header().Set("Content-Type", "application/octet-stream")
		cw.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			if _, err := io.Copy(cw, content); err == errStalled {
				panic(errStalled)
			}
		}
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(stallPanics{cw}, r, p, mod, content)
}

// stallPanics turns the stall "error" into a panic that ServeHTTP
// recovers, since ServeContent ignores write errors.
type stallPanics struct{ *countingWriter }

func (s stallPanics) Write(p []byte) (int, error) {
	n, err := s.countingWriter.Write(p)
	if err == errStalled {
		panic(errStalled)
	}
	return n, err
}

// ReadFrom keeps the contract for the copy ServeContent hands over whole.
func (s stallPanics) ReadFrom(src io.Reader) (int64, error) {
	n, err := s.countingWriter.ReadFrom(src)
	if err == errStalled {
		panic(errStalled)
	}
	return n, err
}

func secureEq(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// Server is a Handler listening on 127.0.0.1.
type Server struct {
	*Handler
	// URL is the base URL: http://127.0.0.1:PORT (https:// with TLS).
	URL string
	// CAFile is the PEM certificate of a TLS server (for --ca-file).
	CAFile string
	srv    *httptest.Server
}

// Start serves dir over HTTP until the test ends.
func Start(t testing.TB, dir string) *Server {
	t.Helper()
	return start(t, dir, false)
}

// StartTLS serves dir over HTTPS with a self-signed certificate for
// 127.0.0.1, written to CAFile.
func StartTLS(t testing.TB, dir string) *Server {
	t.Helper()
	return start(t, dir, true)
}

func start(t testing.TB, dir string, tls bool) *Server {
	h := NewHandler(dir)
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	s := &Server{Handler: h, srv: srv}
	if tls {
		srv.StartTLS()
		s.CAFile = filepath.Join(t.TempDir(), "ca.pem")
		pemData := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
		if err := os.WriteFile(s.CAFile, pemData, 0o644); err != nil {
			t.Fatal(err)
		}
	} else {
		srv.Start()
	}
	s.URL = srv.URL
	t.Cleanup(s.Close)
	return s
}

// Close stops the server and its connections.
func (s *Server) Close() {
	s.srv.CloseClientConnections()
	s.srv.Close()
}

// FileURL returns the URL of a file of the directory.
func (s *Server) FileURL(name string) string {
	return s.URL + "/" + strings.TrimPrefix(filepath.ToSlash(name), "/")
}
