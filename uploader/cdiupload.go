package uploader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	uploadv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/upload/v1beta1"
)

// CDI's upload paths.
const (
	uploadPathSync  = "/v1beta1/upload"
	uploadPathAsync = "/v1beta1/upload-async"
)

// uploadSession is one upload into one DataVolume: a token, the path
// (async where supported), and the transfer attempts.
type uploadSession struct {
	t    *DataVolumeTarget
	hc   *http.Client
	base string
	dv   *cdiv1.DataVolume
	res  *DataVolumeResult

	token   string
	tokenAt time.Time
}

// CDI tokens live 5 minutes; refresh a little before.
const tokenMaxAge = 4 * time.Minute

func (u *uploadSession) ensureToken(ctx context.Context, force bool) error {
	if !force && u.token != "" && time.Since(u.tokenAt) < tokenMaxAge {
		return nil
	}
	req := &uploadv1.UploadTokenRequest{
		TypeMeta:   metav1.TypeMeta{APIVersion: "upload.cdi.kubevirt.io/v1beta1", Kind: "UploadTokenRequest"},
		ObjectMeta: metav1.ObjectMeta{Name: u.dv.Name, Namespace: u.dv.Namespace},
		Spec:       uploadv1.UploadTokenRequestSpec{PvcName: u.dv.Name},
	}
	if err := u.t.kc.Create(ctx, req); err != nil {
		return fmt.Errorf("request upload token (upload.cdi.kubevirt.io uploadtokenrequests in %s): %w", u.dv.Namespace, err)
	}
	if req.Status.Token == "" {
		return errors.New("request upload token: CDI returned no token")
	}
	u.token, u.tokenAt = req.Status.Token, time.Now()
	u.res.TokenRequests++
	return nil
}

// httpStatusError is a non-2xx answer; it never holds the token.
type httpStatusError struct {
	Method, URL string
	Code        int
	Body        string
}

func (e *httpStatusError) Error() string {
	s := fmt.Sprintf("%s %s: %d %s", e.Method, e.URL, e.Code, http.StatusText(e.Code))
	if e.Body != "" {
		s += ": " + e.Body
	}
	return s
}

func readBody(resp *http.Response) string {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return strings.TrimSpace(string(b))
}

// backoff between retries of one kind: 0.5 s doubling to 8 s.
func backoff(n int) time.Duration {
	d := 500 * time.Millisecond << min(n, 4)
	return d
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// do sends one request (HEAD or POST) with a fresh-enough token.
func (u *uploadSession) do(ctx context.Context, method, path string, body io.ReadCloser) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u.base+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+u.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Expect", "100-continue")
		// Chunked on purpose: the server sees the end only after the
		// source returned io.EOF, so a source failing its verification
		// at the last byte never completes the upload.
		req.ContentLength = -1
	}
	resp, err := u.hc.Do(req)
	if err != nil {
		// url.Error quotes the URL (which holds no secret); keep it.
		return nil, err
	}
	return resp, nil
}

// run probes for async support, then transfers with retries: 503 waits
// (bounded by ReadyTimeout), 401 renews the token, a broken transfer or
// a 500 restarts from zero up to Retries times.
func (u *uploadSession) run(ctx context.Context, img Image) (*rawStream, error) {
	o := u.t.o
	if err := u.ensureToken(ctx, false); err != nil {
		return nil, err
	}
	var (
		unavailable, unauthorized, broken int
		unavailableSince                  time.Time
		lastComplete                      bool
	)
	// retryable bookkeeping shared by HEAD and POST.
	handle := func(method, path string, resp *http.Response) (retry bool, err error) {
		e := &httpStatusError{Method: method, URL: u.base + path, Code: resp.StatusCode, Body: readBody(resp)}
		switch resp.StatusCode {
		case http.StatusServiceUnavailable:
			if unavailableSince.IsZero() {
				unavailableSince = time.Now()
			}
			if time.Since(unavailableSince) > o.ReadyTimeout {
				return false, fmt.Errorf("%w: upload proxy unavailable for %v: %v", ErrTimeout, o.ReadyTimeout, e)
			}
			unavailable++
			return true, sleepCtx(ctx, backoff(unavailable-1))
		case http.StatusUnauthorized:
			unauthorized++
			if unauthorized > 3 {
				return false, fmt.Errorf("%w: token refused %d times: %v", ErrRejected, unauthorized, e)
			}
			return true, u.ensureToken(ctx, true)
		}
		return false, fmt.Errorf("%w: %v", ErrRejected, e)
	}

	// HEAD upload-async: 200 where the upload server has async.
	async := false
	for {
		resp, err := u.do(ctx, http.MethodHead, uploadPathAsync, nil)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			broken++
			if broken > o.Retries {
				return nil, fmt.Errorf("HEAD %s: %w", u.base+uploadPathAsync, err)
			}
			if err := sleepCtx(ctx, backoff(broken-1)); err != nil {
				return nil, err
			}
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			async = true
			break
		}
		if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
			break
		}
		retry, err := handle(http.MethodHead, uploadPathAsync, resp)
		if err != nil {
			return nil, err
		}
		if !retry {
			break
		}
	}
	u.res.Async = async
	path := uploadPathSync
	if async {
		path = uploadPathAsync
	}
	broken = 0
	for {
		if err := u.ensureToken(ctx, false); err != nil {
			return nil, err
		}
		stream := newRawStream(ctx, img.Open, o.Compression, o.Progress)
		resp, err := u.do(ctx, http.MethodPost, path, stream)
		started := stream.srcStarted()
		if started {
			u.res.Attempts++
		}
		if err == nil && resp.StatusCode == http.StatusOK {
			resp.Body.Close()
			// The transport may not have closed the body yet.
			stream.Close()
			if !stream.complete() {
				// A 200 before the source ended cannot be a whole image.
				return nil, fmt.Errorf("POST %s: server accepted an incomplete stream", u.base+path)
			}
			_, u.res.WireBytes = stream.counts()
			return stream, nil
		}
		stream.Close()
		complete := stream.complete()
		if serr := stream.sourceErr(); serr != nil && !errors.Is(serr, context.Canceled) {
			// The source failed (read or verification): a retry cannot
			// help.
			stream.rewind()
			if resp != nil {
				resp.Body.Close()
			}
			return nil, fmt.Errorf("source: %w", serr)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		stream.rewind()
		if err != nil {
			// The connection broke mid-transfer.
			broken++
			if broken > o.Retries {
				return nil, fmt.Errorf("POST %s: transfer broken %d times, last: %w", u.base+path, broken, err)
			}
			lastComplete = complete
			if err := sleepCtx(ctx, backoff(broken-1)); err != nil {
				return nil, err
			}
			continue
		}
		switch resp.StatusCode {
		case http.StatusInternalServerError:
			// CDI's "Saving stream failed": the server lost the stream.
			e := &httpStatusError{Method: http.MethodPost, URL: u.base + path, Code: resp.StatusCode, Body: readBody(resp)}
			resp.Body.Close()
			broken++
			if broken > o.Retries {
				return nil, fmt.Errorf("transfer failed %d times, last: %w", broken, e)
			}
			if err := sleepCtx(ctx, backoff(broken-1)); err != nil {
				return nil, err
			}
			continue
		case http.StatusConflict:
			e := &httpStatusError{Method: http.MethodPost, URL: u.base + path, Code: resp.StatusCode, Body: readBody(resp)}
			resp.Body.Close()
			// Already uploaded: only ours if an earlier attempt sent the
			// whole image and lost the answer.
			if lastComplete {
				return nil, fmt.Errorf("%w: %v: the previous attempt sent the whole image but its answer was lost; its digest cannot be confirmed, retry with --replace", ErrRejected, e)
			}
			return nil, fmt.Errorf("%w: %v: DataVolume already holds an upload", ErrRejected, e)
		}
		retry, herr := handle(http.MethodPost, path, resp)
		resp.Body.Close()
		if herr != nil {
			return nil, herr
		}
		if !retry {
			return nil, fmt.Errorf("POST %s: unexpected %d", u.base+path, resp.StatusCode)
		}
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
