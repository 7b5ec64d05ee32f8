package cdi

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"html"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// CDI's upload paths (pkg/common).
const (
	pathSync      = "/v1beta1/upload"
	pathAsync     = "/v1beta1/upload-async"
	pathForm      = "/v1beta1/upload-form"
	pathFormAsync = "/v1beta1/upload-form-async"
)

// CDI's proxy accepts exactly this.
var authHeader = regexp.MustCompile(`(?i)^Bearer\s+([A-Za-z0-9\-\._~\+\/]+)$`)

func tlsServerConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
}

// serveProxy is cdi-uploadproxy and the upload server behind it, in one.
func (p *Peer) serveProxy(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	if path == "/healthz" {
		io.WriteString(w, "OK")
		return
	}
	async, form := false, false
	switch path {
	case pathSync:
	case pathAsync:
		async = true
	case pathForm:
		form = true
	case pathFormAsync:
		async, form = true, true
	default:
		http.NotFound(w, r)
		return
	}
	// --- the proxy ---
	h := r.Header.Get("Authorization")
	if h == "" {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	m := authHeader.FindStringSubmatch(h)
	if len(m) != 2 {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	tok, err := p.tokens.validate(m[1])
	if err != nil {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if tok.Operation != "Upload" || tok.Name == "" || tok.Namespace == "" || tok.Resource.Resource != "persistentvolumeclaims" {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	p.mu.Lock()
	f := &p.faults
	unavailable := f.Unavailable > 0
	if unavailable {
		f.Unavailable--
	}
	p.mu.Unlock()
	if unavailable {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "Upload pod not ready (fault injected)")
		return
	}
	dv, err := p.uploadReady(r.Context(), tok.Namespace, tok.Name)
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, html.EscapeString(err.Error()))
		return
	}
	// --- the upload server ---
	if r.Method == http.MethodHead && async {
		p.mu.Lock()
		noAsync := p.faults.NoAsync
		p.mu.Unlock()
		if noAsync {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	if r.Method != http.MethodPost {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	p.mu.Lock()
	vol := p.volumes[dv.UID]
	if vol == nil {
		vol = &volume{}
		p.volumes[dv.UID] = vol
	}
	switch {
	case vol.uploading || vol.processing:
		p.mu.Unlock()
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	case vol.done:
		p.mu.Unlock()
		w.WriteHeader(http.StatusConflict)
		return
	}
	vol.uploading = true
	key := dv.Namespace + "/" + dv.Name
	attempts := 1
	if u := p.uploads[key]; u != nil {
		attempts = u.Attempts + 1
	}
	p.uploads[key] = &Upload{Namespace: dv.Namespace, Name: dv.Name, Attempts: attempts}
	drop := int64(-1)
	if f.Drops > 0 {
		f.Drops--
		drop = f.DropAfter
	}
	expireOnDrop, streamError, fail := f.ExpireOnDrop, f.StreamErrors > 0, f.FailUpload
	if streamError {
		f.StreamErrors--
	}
	f.FailUpload = false
	p.mu.Unlock()
	done := func(ok bool) {
		p.mu.Lock()
		vol.uploading = false
		vol.done = ok
		p.mu.Unlock()
	}

	var body io.Reader = r.Body
	if drop >= 0 {
		body = &dropReader{r: body, left: drop, drop: func() {
			if expireOnDrop {
				p.tokens.expireAll()
			}
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
		}}
	}
	if form {
		mr, err := r.MultipartReader()
		if err != nil {
			done(false)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		part, err := nextFilePart(mr)
		if err != nil {
			done(false)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if d, ok := body.(*dropReader); ok {
			body = &dropReader{r: part, left: d.left, drop: d.drop}
		} else {
			body = part
		}
	}
	pvcSize := p.pvcSize(r.Context(), dv)
	res, err := p.receive(dv.Namespace, dv.Name, body, pvcSize, volumeModeOf(dv))
	if err == nil && streamError {
		os.Remove(res.Path)
		err = errors.New("unexpected EOF (fault injected)")
	}
	if err != nil {
		done(false)
		if errors.Is(err, errDropped) {
			return // the connection is gone
		}
		// CDI's handleStreamError.
		if errors.Is(err, errNoCapacity) {
			w.WriteHeader(http.StatusBadRequest)
			err = fmt.Errorf("effective image size is larger than the reported available storage: %w", err)
		} else {
			w.WriteHeader(http.StatusInternalServerError)
		}
		fmt.Fprintf(w, "Saving stream failed: %s", err)
		return
	}
	res.Async, res.Form, res.Attempts = async, form, attempts
	p.mu.Lock()
	p.uploads[key] = res
	p.mu.Unlock()
	finish := func() {
		done(true)
		p.updateStatus(context.Background(), dv.Namespace, dv.Name, func(st *cdiv1.DataVolumeStatus) {
			if fail {
				st.Phase = cdiv1.Failed
				setCondition(st, cdiv1.DataVolumeRunning, corev1.ConditionFalse, "Error", "Upload failed (fault injected)")
				return
			}
			st.Phase = cdiv1.Succeeded
			st.Progress = "100.0%"
			setCondition(st, cdiv1.DataVolumeRunning, corev1.ConditionFalse, "Completed", "Upload Complete")
			setCondition(st, cdiv1.DataVolumeReady, corev1.ConditionTrue, "", "")
		})
	}
	if async {
		// Async answers once the bytes are in; processing goes on.
		p.mu.Lock()
		vol.processing = true
		p.mu.Unlock()
		w.WriteHeader(http.StatusOK)
		go func() {
			time.Sleep(50 * time.Millisecond)
			p.mu.Lock()
			vol.processing = false
			p.mu.Unlock()
			finish()
		}()
		return
	}
	finish()
	w.WriteHeader(http.StatusOK)
}

func nextFilePart(mr *multipart.Reader) (*multipart.Part, error) {
	for {
		part, err := mr.NextPart()
		if err != nil {
			return nil, err
		}
		if part.FormName() == "file" {
			return part, nil
		}
	}
}

// uploadReady waits, like the proxy, up to ReadyWait for the DataVolume's
// upload pod.
func (p *Peer) uploadReady(ctx context.Context, ns, name string) (*cdiv1.DataVolume, error) {
	deadline := time.Now().Add(p.o.ReadyWait)
	for {
		dv := &cdiv1.DataVolume{}
		err := p.cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, dv)
		switch {
		case apierrors.IsNotFound(err):
			return nil, fmt.Errorf("rejecting Upload Request for PVC %s that doesn't exist", name)
		case err != nil:
			return nil, err
		case dv.Spec.Source == nil || dv.Spec.Source.Upload == nil:
			return nil, fmt.Errorf("PVC %s is not an upload target", name)
		case dv.Status.Phase == cdiv1.Succeeded:
			return nil, fmt.Errorf("rejecting Upload Request for PVC %s that already finished uploading", name)
		case dv.Status.Phase == cdiv1.UploadReady:
			return dv, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("timed out waiting for the condition: upload pod for PVC %s not ready (phase %q)", name, dv.Status.Phase)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (p *Peer) pvcSize(ctx context.Context, dv *cdiv1.DataVolume) int64 {
	pvc := &corev1.PersistentVolumeClaim{}
	if err := p.cluster.Client.Get(ctx, client.ObjectKey{Namespace: dv.Namespace, Name: dv.Name}, pvc); err != nil {
		return -1
	}
	q := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	return q.Value()
}

var (
	errDropped    = errors.New("connection dropped (fault injected)")
	errNoCapacity = errors.New("image too large")
)

type dropReader struct {
	r    io.Reader
	left int64
	drop func()
}

func (d *dropReader) Read(b []byte) (int, error) {
	if d.left <= 0 {
		d.drop()
		return 0, errDropped
	}
	if int64(len(b)) > d.left {
		b = b[:d.left]
	}
	n, err := d.r.Read(b)
	d.left -= int64(n)
	return n, err
}

// receive decompresses body like CDI (by magic number: gzip, xz, zstd;
// anything else is taken as raw) and writes it sparsely to the image
// file, refusing more than the volume holds.
func (p *Peer) receive(ns, name string, body io.Reader, pvcSize int64, mode corev1.PersistentVolumeMode) (*Upload, error) {
	br := bufio.NewReaderSize(body, 1<<16)
	head, _ := br.Peek(6)
	var r io.Reader = br
	enc := ""
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		enc = "gzip"
		z, err := gzip.NewReader(br)
		if err != nil {
			return nil, err
		}
		r = z
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		enc = "xz"
		z, err := xz.NewReader(br)
		if err != nil {
			return nil, err
		}
		r = z
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		enc = "zstd"
		z, err := zstd.NewReader(br)
		if err != nil {
			return nil, err
		}
		defer z.Close()
		r = z
	}
	limit := int64(-1)
	if pvcSize > 0 {
		limit = pvcSize
		if mode == corev1.PersistentVolumeFilesystem {
			limit = usableSpace(p.overhead(), pvcSize)
		}
	}
	if err := os.MkdirAll(filepath.Join(p.o.Dir, ns), 0o755); err != nil {
		return nil, err
	}
	tmp := p.tmpPath(ns, name)
	f, err := os.Create(tmp)
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp)
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var n int64
	for {
		m, rerr := fill(r, buf)
		if m > 0 {
			chunk := buf[:m]
			h.Write(chunk)
			if limit >= 0 && n+int64(m) > limit {
				return nil, fmt.Errorf("%w: virtual image size is larger than the reported available storage %d", errNoCapacity, limit)
			}
			// Zero blocks stay holes: big sparse test images cost no disk.
			if allZero(chunk) {
				n += int64(m)
			} else {
				if _, err := f.WriteAt(chunk, n); err != nil {
					return nil, err
				}
				n += int64(m)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return nil, rerr
		}
	}
	if err := f.Truncate(n); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	final := p.imagePath(ns, name)
	if err := os.Rename(tmp, final); err != nil {
		return nil, err
	}
	return &Upload{Namespace: ns, Name: name, Path: final, SHA256: hex.EncodeToString(h.Sum(nil)), Size: n, Encoding: enc}, nil
}

// fill reads until b is full or r fails; unlike io.ReadFull it passes a
// truncated body's io.ErrUnexpectedEOF through.
func fill(r io.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := r.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
