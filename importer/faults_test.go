package importer

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hikube/ferry/internal/testpeer/httpserver"
)

// Each fault either ends with the file's exact bytes and digest, or with
// the precise error: never a silently wrong result.
func TestHTTPFaults(t *testing.T) {
	const size = 6<<20 + 4321
	type check func(t *testing.T, d Digests, srv *httpserver.Server)
	retried := func(min int64) check {
		return func(t *testing.T, d Digests, _ *httpserver.Server) {
			if d.Retries < min {
				t.Errorf("Retries = %d, want at least %d", d.Retries, min)
			}
		}
	}
	for _, tc := range []struct {
		name   string
		faults []httpserver.Fault
		opts   func(*Options)
		// wantErr: substrings of the error; nil means success.
		wantErr []string
		is      error
		check   check
		// maxRequests bounds the requests (permanent errors fail at once).
		maxRequests int64
	}{
		{name: "drop mid-body", faults: []httpserver.Fault{{After: 2, Times: 3, Drop: true, DropAfter: 100000}}, check: retried(3)},
		{name: "drop after headers", faults: []httpserver.Fault{{Times: 2, Drop: true}}, check: retried(2)},
		{name: "503 with Retry-After", faults: []httpserver.Fault{{After: 1, Times: 2, Status: 503, RetryAfter: "1"}}, check: retried(2)},
		{name: "429 with Retry-After date", faults: []httpserver.Fault{{After: 3, Times: 2, Status: 429, RetryAfter: time.Now().Add(time.Second).UTC().Format(time.RFC1123)}}, check: retried(2)},
		{name: "500 on the probe", faults: []httpserver.Fault{{Times: 1, Status: 500}}, check: retried(1)},
		{name: "502 and 504", faults: []httpserver.Fault{{After: 1, Times: 1, Status: 502}, {After: 2, Times: 1, Status: 504}}, check: retried(2)},
		{name: "slow responses", faults: []httpserver.Fault{{Rate: 8 << 20}}},
		{name: "delayed headers", faults: []httpserver.Fault{{Delay: 100 * time.Millisecond}}},
		{name: "stall mid-body", faults: []httpserver.Fault{{After: 2, Times: 1, Stall: true, StallBytes: 1000}},
			opts: func(o *Options) { o.Timeout = 300 * time.Millisecond }, check: retried(1)},
		{name: "stall before headers", faults: []httpserver.Fault{{After: 1, Times: 1, Delay: 5 * time.Second}},
			opts: func(o *Options) { o.Timeout = 300 * time.Millisecond }, check: retried(1)},
		{name: "Content-Length too long", faults: []httpserver.Fault{{After: 2, Times: 2, WrongLength: 1000}}, check: retried(2)},
		{name: "Content-Length too short", faults: []httpserver.Fault{{After: 2, Times: 2, WrongLength: -1000}}, check: retried(2)},
		{name: "no validators", faults: []httpserver.Fault{{NoValidators: true}}},
		{name: "ignores conditions", faults: []httpserver.Fault{{IgnoreConditions: true}}},

		{name: "persistent 503", faults: []httpserver.Fault{{After: 1, Status: 503}}, opts: func(o *Options) { o.Retries = 2 },
			wantErr: []string{"fetch http://127.0.0.1:", "/disk.img: range ", "503 Service Unavailable (after 2 retries)"}},
		{name: "persistent drop", faults: []httpserver.Fault{{After: 1, Drop: true, DropAfter: 10}}, opts: func(o *Options) { o.Retries = 2 },
			wantErr: []string{"(after 2 retries)"}},
		{name: "404", faults: []httpserver.Fault{{Status: 404}}, wantErr: []string{"/disk.img: 404 Not Found"}, maxRequests: 1},
		{name: "403 mid-import", faults: []httpserver.Fault{{After: 2, Status: 403}}, wantErr: []string{": range ", "403 Forbidden"}},
		{name: "410 on probe", faults: []httpserver.Fault{{Status: 410}}, wantErr: []string{"410 Gone"}, maxRequests: 1},

		{name: "changed mid-import", faults: []httpserver.Fault{{After: 3, Times: 1, Change: true}},
			wantErr: []string{"source changed during import", "412 Precondition Failed"}, is: ErrSourceChanged},
		{name: "changed, conditions ignored", faults: []httpserver.Fault{{IgnoreConditions: true}, {After: 3, Times: 1, Change: true}},
			wantErr: []string{"source changed during import", "ETag was"}, is: ErrSourceChanged},
		// Nothing tells of the change but the bytes: the checksum does.
		{name: "changed, no validators", faults: []httpserver.Fault{{IgnoreConditions: true, NoValidators: true}, {After: 3, Times: 1, Change: true}},
			wantErr: []string{"checksum mismatch for http://127.0.0.1:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, url, data := serve(t, size)
			for _, f := range tc.faults {
				srv.Fault("/disk.img", f)
			}
			o := testOptions()
			if tc.opts != nil {
				tc.opts(&o)
			}
			o.Checksum = "sha256:" + sha256Hex(data)
			d, got, err := openReadComplete(url, o)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				equalBytes(t, got, data)
				if d.SHA256 != sha256Hex(data) {
					t.Fatalf("SHA256 %s", d.SHA256)
				}
				if tc.check != nil {
					tc.check(t, d, srv)
				}
				t.Logf("ok: %d requests, %d retries, %d bytes fetched (%.3f×)", d.Requests, d.Retries, d.BytesFetched, float64(d.BytesFetched)/size)
			} else {
				if err == nil {
					t.Fatal("no error")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				if tc.is != nil && !errors.Is(err, tc.is) {
					t.Errorf("error %q is not %v", err, tc.is)
				}
				if tc.maxRequests > 0 && srv.Requests() > tc.maxRequests {
					t.Errorf("%d requests, want at most %d (permanent errors are not retried)", srv.Requests(), tc.maxRequests)
				}
				t.Logf("error: %v", err)
			}
			checkNoLeak(t)
		})
	}
}

// openReadComplete opens url, reads it the convert engine's way, and
// completes it, returning the first error.
func openReadComplete(url string, o Options) (Digests, []byte, error) {
	s, err := Open(context.Background(), url, o)
	if err != nil {
		return Digests{}, nil, err
	}
	defer s.Close()
	out := make([]byte, s.Size())
	const chunk = 1 << 20
	errc := make(chan error, 4)
	next := make(chan int64)
	go func() {
		defer close(next)
		for off := int64(0); off < s.Size(); off += chunk {
			next <- off
		}
	}()
	for range 4 {
		go func() {
			var first error
			for off := range next {
				if first != nil {
					continue
				}
				end := min(off+chunk, s.Size())
				if _, err := s.ReadAt(out[off:end], off); err != nil && err != io.EOF {
					first = err
				}
			}
			errc <- first
		}()
	}
	var first error
	for range 4 {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return Digests{}, nil, first
	}
	d, err := s.Complete(context.Background())
	return d, out, err
}

// A server without Range support is read as one stream: in order it
// works, a read behind what is cached says a scratch directory is needed,
// and with one the stream is spooled.
func TestNoRangeSupport(t *testing.T) {
	srv, url, data := serve(t, 5<<20+3)
	srv.Fault("/disk.img", httpserver.Fault{NoRange: true})
	o := testOptions()
	o.Checksum = "sha256:" + sha256Hex(data)

	t.Run("in order", func(t *testing.T) {
		srv.ResetStats()
		d, got, err := openReadComplete(url, o)
		if err != nil {
			t.Fatal(err)
		}
		equalBytes(t, got, data)
		if d.Checksum != o.Checksum || srv.BytesServed() != int64(len(data)) || srv.Requests() != 1 {
			t.Fatalf("digests %+v, served %d in %d requests", d, srv.BytesServed(), srv.Requests())
		}
	})
	t.Run("read behind the cache", func(t *testing.T) {
		o := o
		o.CacheSize = int64(o.Connections+2) * o.BlockSize
		s := mustOpen(t, url, o)
		buf := make([]byte, 1<<20)
		if _, err := s.ReadAt(buf, 4<<20); err != nil {
			t.Fatal(err)
		}
		// Reaching 4 MiB streamed through blocks that a 3 MiB cache
		// cannot all keep: reading them back fails for some, clearly,
		// and returns the right bytes for the others.
		failed := 0
		for off := int64(0); off < 4<<20; off += o.BlockSize {
			b := make([]byte, 10)
			_, err := s.ReadAt(b, off)
			if err != nil {
				if !errors.Is(err, ErrNeedScratch) || !strings.Contains(err.Error(), "does not support range requests") {
					t.Fatalf("read behind: %v", err)
				}
				failed++
			} else if string(b) != string(data[off:off+10]) {
				t.Fatalf("wrong bytes at %d", off)
			}
		}
		if failed == 0 {
			t.Fatal("no read behind the cache failed")
		}
	})
	t.Run("drop mid-stream restarts", func(t *testing.T) {
		srv.ResetStats()
		srv.Fault("/disk.img", httpserver.Fault{Times: 1, Drop: true, DropAfter: 3 << 20})
		d, got, err := openReadComplete(url, o)
		if err != nil {
			t.Fatal(err)
		}
		equalBytes(t, got, data)
		if d.Retries != 1 || d.BytesFetched < int64(len(data))+3<<20 {
			t.Fatalf("digests %+v", d)
		}
	})
	t.Run("scratch", func(t *testing.T) {
		srv.ResetStats()
		o := o
		o.Scratch = t.TempDir()
		s := mustOpen(t, url, o)
		buf := make([]byte, 1000)
		for _, off := range []int64{4 << 20, 0, 12345} {
			if _, err := s.ReadAt(buf, off); err != nil || string(buf) != string(data[off:off+1000]) {
				t.Fatalf("ReadAt %d: %v", off, err)
			}
		}
		d := mustComplete(t, s)
		if d.Checksum != o.Checksum {
			t.Fatal(d)
		}
		entries, _ := os.ReadDir(o.Scratch)
		if len(entries) != 0 {
			t.Fatalf("scratch holds %d files (the spool is unlinked)", len(entries))
		}
	})
}

func TestRedirects(t *testing.T) {
	srv, _, data := serve(t, 3<<20)
	srv.Redirect("/a", "/b", 302)
	srv.Redirect("/b", "/disk.img", 301)
	d, got, err := openReadComplete(srv.URL+"/a", testOptions())
	if err != nil {
		t.Fatal(err)
	}
	equalBytes(t, got, data)
	if d.SHA256 != sha256Hex(data) {
		t.Fatal("digest")
	}
	srv.Redirect("/loop", "/loop", 302)
	if _, err := Open(context.Background(), srv.URL+"/loop", testOptions()); err == nil || !strings.Contains(err.Error(), "redirects") {
		t.Fatalf("redirect loop: %v", err)
	}
}

func TestAuth(t *testing.T) {
	srv, url, data := serve(t, 2<<20)
	const user, pass, token = "alice", "s3cr3t-pa55", "tok-ABCDEF-123"
	dir := t.TempDir()
	passFile := filepath.Join(dir, "pass")
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(passFile, []byte(pass+"\n"), 0o600)
	os.WriteFile(tokenFile, []byte(token+"\n"), 0o600)
	noSecret := func(t *testing.T, s string) {
		t.Helper()
		for _, secret := range []string{pass, token} {
			if strings.Contains(s, secret) {
				t.Fatalf("%q holds a secret", s)
			}
		}
	}

	t.Run("basic", func(t *testing.T) {
		srv.RequireBasic(user, pass)
		defer srv.RequireBasic("", "")
		_, err := Open(context.Background(), url, testOptions())
		if err == nil || !strings.Contains(err.Error(), "401 Unauthorized") {
			t.Fatalf("without auth: %v", err)
		}
		o := testOptions()
		o.Auth = Auth{Username: user, PasswordFile: passFile}
		_, got, err := openReadComplete(url, o)
		if err != nil {
			t.Fatal(err)
		}
		equalBytes(t, got, data)
		// Credentials in the URL work and never show.
		withCreds := strings.Replace(url, "http://", "http://"+user+":"+pass+"@", 1)
		s := mustOpen(t, withCreds, testOptions())
		noSecret(t, s.Name())
		if !strings.Contains(s.Name(), "REDACTED") {
			t.Fatalf("Name %q", s.Name())
		}
		wrong := strings.Replace(url, "http://", "http://"+user+":"+pass+"x@", 1)
		_, err = Open(context.Background(), wrong, testOptions())
		if err == nil {
			t.Fatal("wrong password accepted")
		}
		noSecret(t, err.Error())
	})
	t.Run("bearer", func(t *testing.T) {
		srv.ResetStats()
		srv.RequireBearer(token)
		defer srv.RequireBearer("")
		o := testOptions()
		o.Auth = Auth{TokenFile: tokenFile}
		_, got, err := openReadComplete(url, o)
		if err != nil {
			t.Fatal(err)
		}
		equalBytes(t, got, data)
		o.Auth = Auth{Token: token + "x"}
		_, err = Open(context.Background(), url, o)
		if err == nil || !strings.Contains(err.Error(), "401") {
			t.Fatalf("wrong token: %v", err)
		}
		noSecret(t, err.Error())
		if srv.Requests() > 10 {
			t.Fatalf("401 retried: %d requests", srv.Requests())
		}
	})
	t.Run("headers", func(t *testing.T) {
		srv.RequireBearer(token)
		defer srv.RequireBearer("")
		o := testOptions()
		o.Headers = map[string][]string{"Authorization": {"Bearer " + token}, "X-Extra": {"1"}}
		_, got, err := openReadComplete(url, o)
		if err != nil {
			t.Fatal(err)
		}
		equalBytes(t, got, data)
	})
	t.Run("env", func(t *testing.T) {
		t.Setenv("FERRY_HTTP_TOKEN", token)
		if a := AuthFromEnv(); a.Token != token {
			t.Fatal(a)
		}
	})
	t.Run("invalid", func(t *testing.T) {
		o := testOptions()
		o.Auth = Auth{Token: "t", Username: "u"}
		if err := o.Validate(); err == nil {
			t.Fatal("token and user accepted")
		}
		o.Auth = Auth{PasswordFile: filepath.Join(dir, "missing")}
		if err := o.Validate(); err == nil {
			t.Fatal("missing file accepted")
		}
	})
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	_, data := randomFile(t, dir, "disk.img", 2<<20+1, 3)
	srv := httpserver.StartTLS(t, dir)
	url := srv.URL + "/disk.img"

	_, err := Open(context.Background(), url, testOptions())
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("unknown CA: %v", err)
	}
	if n := srv.Requests(); n != 0 {
		t.Fatalf("a TLS failure was retried: %d requests reached the server", n)
	}
	o := testOptions()
	o.CAFile = srv.CAFile
	_, got, err := openReadComplete(url, o)
	if err != nil {
		t.Fatal(err)
	}
	equalBytes(t, got, data)
	o = testOptions()
	o.Insecure = true
	if _, got, err = openReadComplete(url, o); err != nil {
		t.Fatal(err)
	}
	equalBytes(t, got, data)
	o = testOptions()
	o.CAFile = filepath.Join(dir, "disk.img")
	if _, err := Open(context.Background(), url, o); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("bad CA file: %v", err)
	}
}

func TestChecksumMismatch(t *testing.T) {
	_, url, data := serve(t, 1<<20+5)
	for _, alg := range []string{"md5", "sha1", "sha256", "sha512"} {
		t.Run(alg, func(t *testing.T) {
			h := newHash(alg)
			h.Write(data)
			good := alg + ":" + hexOf(h.Sum(nil))
			o := testOptions()
			o.Checksum = good
			d, _, err := openReadComplete(url, o)
			if err != nil || d.Checksum != good || d.SHA256 != sha256Hex(data) {
				t.Fatalf("good checksum: %+v %v", d, err)
			}
			bad := alg + ":" + strings.Repeat("0", hexLen[alg])
			o.Checksum = bad
			_, _, err = openReadComplete(url, o)
			var ce *ChecksumError
			if !errors.As(err, &ce) {
				t.Fatalf("bad checksum: %v", err)
			}
			if ce.Alg != alg || ce.Expected != bad[len(alg)+1:] || ce.Actual != good[len(alg)+1:] || ce.Source != url {
				t.Fatalf("ChecksumError %+v", ce)
			}
			want := "checksum mismatch for " + url + ": expected " + bad + ", got " + good
			if err.Error() != want {
				t.Fatalf("error %q, want %q", err, want)
			}
		})
	}
}
