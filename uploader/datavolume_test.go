package uploader_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hikube/ferry/internal/testpeer/cdi"
	kubepeer "github.com/hikube/ferry/internal/testpeer/kube"
	"github.com/hikube/ferry/pkg/kube"
	"github.com/hikube/ferry/uploader"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

func TestMain(m *testing.M) {
	os.Exit(kubepeer.Main(m, func() {
		if peer.p != nil {
			peer.p.Stop()
		}
	}))
}

var peer struct {
	once sync.Once
	p    *cdi.Peer
	err  error
}

// env returns the shared cluster, the fake CDI and a client for the
// least-privilege user (what ferry runs as).
func env(t *testing.T) (*kubepeer.Cluster, *cdi.Peer, *kube.Client) {
	t.Helper()
	c := kubepeer.Shared(t)
	peer.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		peer.p, peer.err = cdi.Start(ctx, c, cdi.Options{})
	})
	if peer.err != nil {
		t.Fatal(peer.err)
	}
	peer.p.Reset()
	kc, err := kube.New(kube.Options{Kubeconfig: c.Kubeconfig})
	if err != nil {
		t.Fatal(err)
	}
	if kc.Namespace != c.Namespace {
		t.Fatalf("namespace from kubeconfig = %q, want %q", kc.Namespace, c.Namespace)
	}
	return c, peer.p, kc
}

// testImage is a RAW image with data, zero runs and a ragged tail.
func testImage(size int) ([]byte, string) {
	b := make([]byte, size)
	r := rand.New(rand.NewSource(int64(size)))
	for off := 0; off < size; off += 1 << 20 {
		if (off>>20)%3 == 1 {
			continue // a hole
		}
		r.Read(b[off:min(off+1<<19, size)])
	}
	s := sha256.Sum256(b)
	return b, hex.EncodeToString(s[:])
}

func rawImage(b []byte, opens *atomic.Int32) uploader.Image {
	return uploader.Image{
		Open: func(ctx context.Context) (io.ReadCloser, error) {
			if opens != nil {
				opens.Add(1)
			}
			return io.NopCloser(bytes.NewReader(b)), nil
		},
		VirtualSize: int64(len(b)),
		SourceURL:   "https://images.example.com/debian.qcow2",
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func getDV(t *testing.T, c *kubepeer.Cluster, name string) (*cdiv1.DataVolume, error) {
	dv := &cdiv1.DataVolume{}
	err := c.Client.Get(context.Background(), client.ObjectKey{Namespace: c.Namespace, Name: name}, dv)
	return dv, err
}

type counter struct{ n atomic.Int64 }

func (c *counter) Add(n int64) { c.n.Add(n) }

func TestDataVolumeUpload(t *testing.T) {
	c, p, kc := env(t)
	img, sum := testImage(9<<20 + 12345)
	tests := []struct {
		name     string
		opts     uploader.DataVolumeOptions
		noAsync  bool
		wantEnc  string
		wantSize int64
	}{
		{name: "async-block", opts: uploader.DataVolumeOptions{}, wantSize: 10 << 20},
		{name: "sync-only-server", noAsync: true, wantSize: 10 << 20},
		{name: "gzip", opts: uploader.DataVolumeOptions{Compression: uploader.CompressGzip}, wantEnc: "gzip", wantSize: 10 << 20},
		{name: "zstd-filesystem", opts: uploader.DataVolumeOptions{Compression: uploader.CompressZstd, VolumeMode: corev1.PersistentVolumeFilesystem, AccessMode: corev1.ReadWriteOnce}, wantEnc: "zstd", wantSize: 10 << 20},
		{name: "explicit-size", opts: uploader.DataVolumeOptions{Size: 64 << 20, StorageClass: "replicated"}, wantSize: 64 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.Reset()
			p.SetFaults(cdi.Faults{NoAsync: tt.noAsync})
			o := tt.opts
			o.Name = "dv-" + tt.name
			prog := &counter{}
			o.Progress = prog
			tgt, err := uploader.NewDataVolumeTarget(o, uploader.WithKube(kc))
			if err != nil {
				t.Fatal(err)
			}
			res, err := tgt.Upload(ctxT(t), rawImage(img, nil))
			if err != nil {
				t.Fatal(err)
			}
			got := p.Received(c.Namespace, o.Name)
			if got == nil || got.SHA256 != sum || got.Size != int64(len(img)) {
				t.Fatalf("received %+v, want sha256 %s size %d", got, sum, len(img))
			}
			if got.Encoding != tt.wantEnc || got.Async == tt.noAsync || res.Async == tt.noAsync {
				t.Errorf("encoding %q async %v (result async %v), want %q async %v", got.Encoding, got.Async, res.Async, tt.wantEnc, !tt.noAsync)
			}
			if res.RawSHA256 != sum || res.Size != tt.wantSize || res.Attempts != 1 || res.TokenRequests != 1 {
				t.Errorf("result %+v", res)
			}
			if prog.n.Load() != int64(len(img)) {
				t.Errorf("progress %d, want %d", prog.n.Load(), len(img))
			}
			dv, err := getDV(t, c, o.Name)
			if err != nil {
				t.Fatal(err)
			}
			if dv.Status.Phase != cdiv1.Succeeded || dv.Annotations[uploader.AnnRawSHA256] != sum {
				t.Errorf("DataVolume phase %q annotations %v", dv.Status.Phase, dv.Annotations)
			}
			if _, ok := dv.Annotations[uploader.AnnImmediateBinding]; !ok {
				t.Error("no bind-immediate annotation")
			}
			st := dv.Spec.Storage
			q := st.Resources.Requests[corev1.ResourceStorage]
			wantMode := corev1.PersistentVolumeBlock
			if o.VolumeMode != "" {
				wantMode = o.VolumeMode
			}
			if *st.StorageClassName != "replicated" || *st.VolumeMode != wantMode || q.Value() != tt.wantSize || dv.Spec.Source.Upload == nil {
				t.Errorf("DataVolume spec %+v", st)
			}
			if wantMode == corev1.PersistentVolumeFilesystem {
				// CDIConfig's 5.5 % overhead.
				if want := int64(11062477); res.PVCSize != want { // ceil(10 MiB * 1.055)
					t.Errorf("PVC size %d, want %d", res.PVCSize, want)
				}
			}
			if dv.Labels[uploader.LabelManagedBy] != "ferry" || dv.Labels[uploader.LabelSourceHost] != "images.example.com" {
				t.Errorf("labels %v", dv.Labels)
			}
		})
	}
}

func TestVMDiskUpload(t *testing.T) {
	c, p, kc := env(t)
	img, sum := testImage(3 << 20)
	tgt, err := uploader.NewDataVolumeTarget(uploader.DataVolumeOptions{Name: "iso", VMDisk: true, Optical: true}, uploader.WithKube(kc))
	if err != nil {
		t.Fatal(err)
	}
	if tgt.String() != "vmdisk://"+c.Namespace+"/iso" {
		t.Errorf("target %s", tgt)
	}
	res, err := tgt.Upload(ctxT(t), rawImage(img, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Received(c.Namespace, "vm-disk-iso"); got == nil || got.SHA256 != sum {
		t.Fatalf("received %+v", got)
	}
	if res.DataVolume != "vm-disk-iso" || res.VMDisk != "iso" {
		t.Errorf("result %+v", res)
	}
	vd := &unstructured.Unstructured{}
	vd.SetAPIVersion("apps.cozystack.io/v1alpha1")
	vd.SetKind("VMDisk")
	if err := c.Client.Get(context.Background(), client.ObjectKey{Namespace: c.Namespace, Name: "iso"}, vd); err != nil {
		t.Fatal(err)
	}
	opt, _, _ := unstructured.NestedBool(vd.Object, "spec", "optical")
	storage, _, _ := unstructured.NestedString(vd.Object, "spec", "storage")
	if !opt || storage != "3Mi" || vd.GetAnnotations()[uploader.AnnRawSHA256] != sum {
		t.Errorf("VMDisk %v", vd.Object)
	}
}

// Faults on the way: each must end in a complete, correct upload.
func TestUploadRecovers(t *testing.T) {
	c, p, kc := env(t)
	img, sum := testImage(6 << 20)
	tests := []struct {
		name         string
		faults       cdi.Faults
		wantAttempts int
		wantTokens   int
		wantOpens    int32
	}{
		// 503 on HEAD and POST: waits, no transfer started for nothing.
		{name: "503-then-ok", faults: cdi.Faults{Unavailable: 3}, wantAttempts: 1, wantTokens: 1, wantOpens: 1},
		// A broken transfer restarts from zero.
		{name: "broken-twice", faults: cdi.Faults{DropAfter: 1 << 20, Drops: 2}, wantAttempts: 3, wantTokens: 1, wantOpens: 3},
		// The token expired while the first transfer broke: 401, new token.
		{name: "token-expired-midway", faults: cdi.Faults{DropAfter: 2 << 20, Drops: 1, ExpireOnDrop: true}, wantAttempts: 2, wantTokens: 2, wantOpens: 2},
		// The server lost the stream (500).
		{name: "stream-error", faults: cdi.Faults{StreamErrors: 1}, wantAttempts: 2, wantTokens: 1, wantOpens: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.Reset()
			p.SetFaults(tt.faults)
			var opens atomic.Int32
			prog := &counter{}
			name := "recover-" + tt.name
			tgt, err := uploader.NewDataVolumeTarget(uploader.DataVolumeOptions{Name: name, Progress: prog}, uploader.WithKube(kc))
			if err != nil {
				t.Fatal(err)
			}
			res, err := tgt.Upload(ctxT(t), rawImage(img, &opens))
			if err != nil {
				t.Fatal(err)
			}
			got := p.Received(c.Namespace, name)
			if got == nil || got.SHA256 != sum {
				t.Fatalf("received %+v", got)
			}
			if res.Attempts != tt.wantAttempts || res.TokenRequests != tt.wantTokens || opens.Load() != tt.wantOpens {
				t.Errorf("attempts %d tokens %d opens %d, want %d %d %d", res.Attempts, res.TokenRequests, opens.Load(), tt.wantAttempts, tt.wantTokens, tt.wantOpens)
			}
			if prog.n.Load() != int64(len(img)) {
				t.Errorf("progress %d after rewinds, want %d", prog.n.Load(), len(img))
			}
		})
	}
}

// Failures must be clear, early, and leave no DataVolume behind.
func TestUploadFails(t *testing.T) {
	c, p, kc := env(t)
	img, _ := testImage(4 << 20)
	badSum := func() uploader.Image {
		im := rawImage(img, nil)
		im.Open = func(ctx context.Context) (io.ReadCloser, error) {
			return io.NopCloser(&failAtEOF{r: bytes.NewReader(img), err: errors.New("checksum mismatch: want sha256:00…")}), nil
		}
		return im
	}
	badClose := func() uploader.Image {
		im := rawImage(img, nil)
		im.Open = func(ctx context.Context) (io.ReadCloser, error) {
			return failClose{bytes.NewReader(img)}, nil
		}
		return im
	}
	tests := []struct {
		name    string
		opts    uploader.DataVolumeOptions
		faults  cdi.Faults
		img     uploader.Image
		wantErr error
		wantMsg string
		created bool // something was created (and must be gone)
	}{
		{name: "too-small", opts: uploader.DataVolumeOptions{Size: 1 << 20}, img: rawImage(img, nil), wantErr: uploader.ErrTooSmall},
		{name: "wffc", opts: uploader.DataVolumeOptions{NoBindImmediate: true}, img: rawImage(img, nil), wantErr: uploader.ErrWaitConsumer, wantMsg: "binds only when a VM uses it", created: true},
		{name: "checksum-mismatch", img: badSum(), wantErr: nil, wantMsg: "checksum mismatch", created: true},
		{name: "verify-at-close", img: badClose(), wantMsg: "verification failed", created: true},
		{name: "broken-too-often", opts: uploader.DataVolumeOptions{Retries: 1}, faults: cdi.Faults{DropAfter: 1 << 20, Drops: 5}, img: rawImage(img, nil), wantMsg: "transfer broken 2 times", created: true},
		{name: "failed-after-upload", faults: cdi.Faults{FailUpload: true}, img: rawImage(img, nil), wantErr: uploader.ErrFailed, wantMsg: "fault injected", created: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.Reset()
			p.SetFaults(tt.faults)
			o := tt.opts
			o.Name = "fail-" + tt.name
			tgt, err := uploader.NewDataVolumeTarget(o, uploader.WithKube(kc))
			if err != nil {
				t.Fatal(err)
			}
			tokens := p.TokensIssued()
			_, err = tgt.Upload(ctxT(t), tt.img)
			if err == nil {
				t.Fatal("no error")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) || !strings.HasPrefix(err.Error(), "upload dv://"+c.Namespace+"/"+o.Name+": ") {
				t.Errorf("error %q, want it to name the target and say %q", err, tt.wantMsg)
			}
			if !tt.created && p.TokensIssued() != tokens {
				t.Error("a token was requested before the size check")
			}
			// Nothing is left claiming success (or anything).
			deadline := time.Now().Add(10 * time.Second)
			for {
				_, err := getDV(t, c, o.Name)
				if apierrors.IsNotFound(err) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("DataVolume %s still there: %v", o.Name, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}

// failAtEOF verifies like the fetch layer: the mismatch replaces io.EOF.
type failAtEOF struct {
	r   io.Reader
	err error
}

func (f *failAtEOF) Read(b []byte) (int, error) {
	n, err := f.r.Read(b)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

type failClose struct{ io.Reader }

func (failClose) Close() error { return errors.New("verification failed") }

func TestExistingDataVolume(t *testing.T) {
	c, p, kc := env(t)
	img, sum := testImage(2 << 20)
	src := strings.Repeat("ab", 32)
	up := func(o uploader.DataVolumeOptions, sourceSHA string) (*uploader.DataVolumeResult, error) {
		o.Name = "existing"
		tgt, err := uploader.NewDataVolumeTarget(o, uploader.WithKube(kc))
		if err != nil {
			t.Fatal(err)
		}
		im := rawImage(img, nil)
		im.SourceSHA256 = sourceSHA
		return tgt.Upload(ctxT(t), im)
	}
	if _, err := up(uploader.DataVolumeOptions{}, src); err != nil {
		t.Fatal(err)
	}
	dv, _ := getDV(t, c, "existing")
	if dv.Annotations[uploader.AnnSourceSHA256] != src || dv.Labels[uploader.LabelSourceSHA256] != src[:63] {
		t.Fatalf("recorded %v %v", dv.Annotations, dv.Labels)
	}
	tests := []struct {
		name       string
		opts       uploader.DataVolumeOptions
		sourceSHA  string
		wantErr    error
		wantReused bool
		wantSent   bool
	}{
		{name: "plain", sourceSHA: src, wantErr: uploader.ErrExists},
		{name: "reuse-same", opts: uploader.DataVolumeOptions{ReuseIfSame: true}, sourceSHA: src, wantReused: true},
		{name: "reuse-other", opts: uploader.DataVolumeOptions{ReuseIfSame: true}, sourceSHA: strings.Repeat("cd", 32), wantErr: uploader.ErrExists},
		{name: "reuse-unknown", opts: uploader.DataVolumeOptions{ReuseIfSame: true}, wantErr: uploader.ErrExists},
		{name: "replace", opts: uploader.DataVolumeOptions{Replace: true}, sourceSHA: src, wantSent: true},
		{name: "reuse-after-replace", opts: uploader.DataVolumeOptions{ReuseIfSame: true, DataSource: "debian"}, sourceSHA: src, wantReused: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.Reset()
			tokens := p.TokensIssued()
			res, err := up(tt.opts, tt.sourceSHA)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if res.Reused != tt.wantReused || (p.Received(c.Namespace, "existing") != nil) != tt.wantSent || (p.TokensIssued() != tokens) != tt.wantSent {
				t.Errorf("reused %v, sent %v, want %v %v", res.Reused, p.Received(c.Namespace, "existing") != nil, tt.wantReused, tt.wantSent)
			}
			if res.RawSHA256 != sum {
				t.Errorf("raw sha256 %s", res.RawSHA256)
			}
		})
	}
	ds := &cdiv1.DataSource{}
	if err := c.Client.Get(context.Background(), client.ObjectKey{Namespace: c.Namespace, Name: "debian"}, ds); err != nil {
		t.Fatal(err)
	}
	if ds.Spec.Source.PVC == nil || ds.Spec.Source.PVC.Name != "existing" {
		t.Errorf("DataSource %+v", ds.Spec)
	}
}

func TestQuotaExceeded(t *testing.T) {
	c, _, kc := env(t)
	ctx := ctxT(t)
	// The apiserver's quota admission enforces status.hard; no quota
	// controller runs here, so the test sets the status it would.
	q := &corev1.ResourceQuota{
		ObjectMeta: metav1.ObjectMeta{Name: "storage", Namespace: c.Namespace},
		Spec:       corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{corev1.ResourceRequestsStorage: resource.MustParse("100Gi")}},
	}
	if err := c.Client.Create(ctx, q); err != nil {
		t.Fatal(err)
	}
	defer c.Client.Delete(context.Background(), q)
	q.Status.Hard = q.Spec.Hard
	q.Status.Used = corev1.ResourceList{corev1.ResourceRequestsStorage: resource.MustParse("99Gi")}
	if err := c.Client.Status().Update(ctx, q); err != nil {
		t.Fatal(err)
	}
	img, _ := testImage(1 << 20)
	im := rawImage(img, nil)
	im.VirtualSize = 2 << 30 // a 2 GiB disk does not fit the 1 GiB left
	tgt, err := uploader.NewDataVolumeTarget(uploader.DataVolumeOptions{Name: "quota"}, uploader.WithKube(kc))
	if err != nil {
		t.Fatal(err)
	}
	_, err = tgt.Upload(ctx, im)
	if !errors.Is(err, uploader.ErrQuota) || !strings.Contains(err.Error(), "exceeded quota") {
		t.Fatalf("error %v, want quota exceeded", err)
	}
}

func TestPull(t *testing.T) {
	c, p, kc := env(t)
	img, sum := testImage(5 << 20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "disk.raw", time.Time{}, bytes.NewReader(img))
	}))
	defer srv.Close()
	tests := []struct {
		name    string
		src     uploader.PullSource
		wantErr error
	}{
		{name: "checksum-ok", src: uploader.PullSource{URL: srv.URL + "/disk.raw", SHA256: sum, ExtraHeaders: []string{"X-Test: 1"}}},
		{name: "checksum-bad", src: uploader.PullSource{URL: srv.URL + "/disk.raw", SHA256: strings.Repeat("0", 64)}, wantErr: uploader.ErrFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.Reset()
			tt.src.VirtualSize = int64(len(img))
			name := "pull-" + tt.name
			tgt, err := uploader.NewDataVolumeTarget(uploader.DataVolumeOptions{Name: name, Retries: 1}, uploader.WithKube(kc))
			if err != nil {
				t.Fatal(err)
			}
			res, err := tgt.Pull(ctxT(t), tt.src)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), "checksum mismatch") {
					t.Fatalf("error %v, want %v with the checksum mismatch", err, tt.wantErr)
				}
				if _, err := getDV(t, c, name); !apierrors.IsNotFound(err) {
					t.Errorf("failed pull DataVolume left behind: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Received(c.Namespace, name); got == nil || got.SHA256 != sum || !res.Pull {
				t.Fatalf("imported %+v", got)
			}
			dv, _ := getDV(t, c, name)
			if dv.Spec.Source.HTTP == nil || dv.Spec.Source.HTTP.Checksum != "sha256:"+sum || dv.Spec.Source.Upload != nil {
				t.Errorf("source %+v", dv.Spec.Source)
			}
		})
	}
}

// The real CRD schema (from CDI's module) accepts what ferry builds for
// --pull and rejects a malformed variant: the shape is checked by the
// apiserver, not by ferry's own idea of it.
func TestPullShapeAgainstCRDSchema(t *testing.T) {
	c, _, kc := env(t)
	ctx := ctxT(t)
	for _, s3 := range []bool{false, true} {
		name := "shape-http"
		if s3 {
			name = "shape-s3"
		}
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
			"metadata": map[string]any{"name": name + "-bad", "namespace": c.Namespace},
			"spec": map[string]any{
				"source":  map[string]any{"http": map[string]any{"checksum": "sha256:00"}}, // no url
				"storage": map[string]any{"resources": map[string]any{"requests": map[string]any{"storage": "1Gi"}}},
			},
		}}
		if err := kc.Create(ctx, u, client.DryRunAll); err == nil || !apierrors.IsInvalid(err) {
			t.Fatalf("schema accepted a source.http without url: %v", err)
		}
		tgt, err := uploader.NewDataVolumeTarget(uploader.DataVolumeOptions{Name: name, DoneTimeout: 2 * time.Second}, uploader.WithKube(kc))
		if err != nil {
			t.Fatal(err)
		}
		// A closed loopback port: nothing leaves the machine.
		src := uploader.PullSource{URL: "https://127.0.0.1:1/images/debian.raw", S3: s3, SecretRef: "s3-creds", VirtualSize: 1 << 30}
		if !s3 {
			src.SHA256 = strings.Repeat("ab", 32)
			src.CertConfigMap = "ca"
		}
		// The peer leaves s3 imports pending: ferry times out, but the
		// create went through the real schema first.
		_, err = tgt.Pull(ctx, src)
		if !s3 && err != nil {
			// http is imported by the peer, from an unreachable host.
			if !errors.Is(err, uploader.ErrFailed) && !errors.Is(err, uploader.ErrTimeout) {
				t.Fatalf("http pull: %v", err)
			}
		}
		if s3 && !errors.Is(err, uploader.ErrTimeout) {
			t.Fatalf("s3 pull: %v, want a timeout (no importer)", err)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		o    uploader.DataVolumeOptions
		ok   bool
	}{
		{"defaults", uploader.DataVolumeOptions{Name: "a"}, true},
		{"no-name", uploader.DataVolumeOptions{}, false},
		{"bad-name", uploader.DataVolumeOptions{Name: "Debian_12"}, false},
		{"vmdisk-name-too-long", uploader.DataVolumeOptions{Name: strings.Repeat("a", 250), VMDisk: true}, false},
		{"bad-mode", uploader.DataVolumeOptions{Name: "a", VolumeMode: "Raw"}, false},
		{"bad-access", uploader.DataVolumeOptions{Name: "a", AccessMode: "RWX"}, false},
		{"replace-and-reuse", uploader.DataVolumeOptions{Name: "a", Replace: true, ReuseIfSame: true}, false},
		{"bad-compression", uploader.DataVolumeOptions{Name: "a", Compression: "lz4"}, false},
		{"ca-and-insecure", uploader.DataVolumeOptions{Name: "a", CAFile: "x", Insecure: true}, false},
		{"bad-proxy", uploader.DataVolumeOptions{Name: "a", UploadProxyURL: "ftp://x"}, false},
		{"bare-proxy", uploader.DataVolumeOptions{Name: "a", UploadProxyURL: "cdi-uploadproxy.example.com"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.o
			err := o.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok %v", err, tt.ok)
			}
			if tt.ok && (o.StorageClass != "replicated" || o.VolumeMode != corev1.PersistentVolumeBlock || o.AccessMode != corev1.ReadWriteMany || o.Retries != 3) {
				t.Errorf("defaults %+v", o)
			}
		})
	}
}
