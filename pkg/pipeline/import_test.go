package pipeline

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hikube/ferry/importer"
	"github.com/hikube/ferry/internal/testpeer/cdi"
	kubepeer "github.com/hikube/ferry/internal/testpeer/kube"
	"github.com/hikube/ferry/internal/testpeer/minio"
	"github.com/hikube/ferry/internal/testutil"
	"github.com/hikube/ferry/pkg/kube"
	"github.com/hikube/ferry/uploader"
	minioapi "github.com/minio/minio-go/v7"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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

func cluster(t *testing.T) (*kubepeer.Cluster, *cdi.Peer) {
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
	return c, peer.p
}

// fixture is a qcow2 made by qemu-img from a RAW with a pattern, and the
// RAW's SHA-256 per qemu-img.
func fixture(t *testing.T) (qcow2, raw, rawSHA string) {
	t.Helper()
	dir := t.TempDir()
	raw = filepath.Join(dir, "disk.raw")
	testutil.Pattern(t, raw, 8<<20+4096, 7)
	qcow2 = filepath.Join(dir, "debian-12.qcow2")
	testutil.QemuImg(t, "convert", "-f", "raw", "-O", "qcow2", "-c", raw, qcow2)
	rawSHA, _ = testutil.ReferenceSHA256(t, qcow2, "qcow2")
	return qcow2, raw, rawSHA
}

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in   string
		want Target
		ok   bool
	}{
		{"", Target{Kind: TargetStore}, true},
		{"out.raw", Target{Kind: TargetFile, Path: "out.raw"}, true},
		{"file:///tmp/x.raw", Target{Kind: TargetFile, Path: "/tmp/x.raw"}, true},
		{"s3://b/k/x.raw", Target{Kind: TargetS3, Bucket: "b", Key: "k/x.raw"}, true},
		{"dv://disk", Target{Kind: TargetDV, Name: "disk"}, true},
		{"dv://ns/disk", Target{Kind: TargetDV, Namespace: "ns", Name: "disk"}, true},
		{"vmdisk://ns/disk", Target{Kind: TargetVMDisk, Namespace: "ns", Name: "disk"}, true},
		{"dv://", Target{}, false},
		{"dv://a/b/c", Target{}, false},
		{"dv:///b", Target{}, false},
		{"file://host/x", Target{}, false},
		{"ftp://x/y", Target{}, false},
	}
	for _, tt := range tests {
		got, err := ParseTarget(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseTarget(%q) = %+v, %v", tt.in, got, err)
		}
	}
}

func TestStoreName(t *testing.T) {
	for in, want := range map[string]string{
		"/x/debian-12-generic-amd64.qcow2":                 "debian-12-generic-amd64",
		"https://h/images/ubuntu-24.04.img?sig=1":          "ubuntu-24.04",
		"s3://b/win/disk.vmdk.gz":                          "disk",
		"noble-server-cloudimg-amd64.raw.xz":               "noble-server-cloudimg-amd64",
		"https://cloud.debian.org/x/debian-12-nocloud.tar": "debian-12-nocloud.tar",
	} {
		if got := storeName(in); got != want {
			t.Errorf("storeName(%q) = %q, want %q", in, got, want)
		}
	}
}

// One real image through each target: bytes must match qemu-img's RAW.
func TestImportTargets(t *testing.T) {
	qcow2, _, rawSHA := fixture(t)
	dir := t.TempDir()
	tests := []struct {
		name   string
		target string
		kube   bool
		s3     bool
		dv     uploader.DataVolumeOptions
	}{
		{name: "file", target: filepath.Join(dir, "out.raw")},
		{name: "store", target: ""},
		{name: "dv-zstd", target: "dv://import-zstd", kube: true, dv: uploader.DataVolumeOptions{Compression: uploader.CompressZstd}},
		{name: "vmdisk", target: "vmdisk://import", kube: true},
		{name: "s3", target: "s3://images/debian-12.raw", s3: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tgt, err := ParseTarget(tt.target)
			if err != nil {
				t.Fatal(err)
			}
			j := ImportJob{Source: qcow2, Target: tgt, StoreDir: filepath.Join(dir, "store"), DataVolume: tt.dv, NoSync: true}
			var c *kubepeer.Cluster
			var p *cdi.Peer
			if tt.kube {
				c, p = cluster(t)
				j.Kube = kube.Options{Kubeconfig: c.Kubeconfig}
			}
			if tt.s3 {
				srv := minio.Start(t)
				if err := srv.Client.MakeBucket(context.Background(), "images", minioapi.MakeBucketOptions{}); err != nil {
					t.Fatal(err)
				}
				j.S3 = uploader.S3Options{Endpoint: srv.URL, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey}
			}
			rep, err := Import(context.Background(), j)
			if err != nil {
				t.Fatal(err)
			}
			if rep.RawSHA256 != rawSHA || rep.Format != "qcow2" || rep.VirtualSize != 8<<20+4096 {
				t.Fatalf("report %+v, want raw sha256 %s", rep, rawSHA)
			}
			switch {
			case tt.kube:
				dvName := tgt.Name
				if tgt.Kind == TargetVMDisk {
					dvName = "vm-disk-" + tgt.Name
				}
				got := p.Received(c.Namespace, dvName)
				if got == nil || got.SHA256 != rawSHA {
					t.Fatalf("received %+v", got)
				}
				if rep.DataVolume == nil || rep.DataVolume.Phases[len(rep.DataVolume.Phases)-1].Phase != "Succeeded" {
					t.Errorf("report %+v", rep.DataVolume)
				}
			case tt.s3:
				if rep.S3 == nil || rep.S3.RawSHA256 != rawSHA {
					t.Errorf("report %+v", rep.S3)
				}
			default:
				if sum, _ := testutil.SHA256File(t, rep.Path); sum != rawSHA {
					t.Errorf("%s: sha256 %s", rep.Path, sum)
				}
				if tgt.Kind == TargetStore && (rep.Store == nil || rep.Store.Name != "debian-12" || rep.Store.RawSHA256 != rawSHA) {
					t.Errorf("store record %+v", rep.Store)
				}
			}
		})
	}
}

// A compressed RAW is converted as a stream: its size is known only at
// the end, so a DataVolume needs --size; the bytes are the same.
func TestImportStreamedSource(t *testing.T) {
	c, p := cluster(t)
	_, raw, _ := fixture(t)
	want, size := testutil.SHA256File(t, raw)
	testutil.Run(t, "gzip", "-k", raw)
	gz := raw + ".gz"
	j := ImportJob{Source: gz, Target: Target{Kind: TargetDV, Name: "streamed"}, Kube: kube.Options{Kubeconfig: c.Kubeconfig}}
	if _, err := Import(context.Background(), j); err == nil || !strings.Contains(err.Error(), "pass a size") {
		t.Fatalf("no size: %v", err)
	}
	j.DataVolume.Size = 16 << 20
	rep, err := Import(context.Background(), j)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Received(c.Namespace, "streamed"); got == nil || got.SHA256 != want || got.Size != size || rep.RawSHA256 != want {
		t.Fatalf("received %+v, report %+v", got, rep)
	}
}

// A source whose checksum does not match: the upload never completes and
// no DataVolume is left, let alone one claiming success.
func TestImportChecksumMismatch(t *testing.T) {
	c, p := cluster(t)
	qcow2, _, _ := fixture(t)
	for _, tt := range []struct{ name, checksum string }{
		{"dv-mismatch", "sha256:" + strings.Repeat("0", 64)},
	} {
		j := ImportJob{
			Source: qcow2, Target: Target{Kind: TargetDV, Name: tt.name},
			Fetch: importerOpts(tt.checksum), Kube: kube.Options{Kubeconfig: c.Kubeconfig},
		}
		_, err := Import(context.Background(), j)
		if err == nil || !strings.Contains(err.Error(), "checksum") {
			t.Fatalf("error %v, want a checksum mismatch", err)
		}
		if got := p.Received(c.Namespace, tt.name); got != nil && got.SHA256 != "" {
			t.Errorf("the peer took a complete image: %+v", got)
		}
		err = c.Client.Get(context.Background(), client.ObjectKey{Namespace: c.Namespace, Name: tt.name}, &cdiv1.DataVolume{})
		if !apierrors.IsNotFound(err) {
			t.Errorf("DataVolume left behind: %v", err)
		}
	}
}

// --reuse-if-same on a local file: the digest is computed up front, the
// second import sends nothing.
func TestImportReuseIfSame(t *testing.T) {
	c, p := cluster(t)
	qcow2, _, _ := fixture(t)
	j := ImportJob{Source: qcow2, Target: Target{Kind: TargetDV, Name: "reuse"}, Kube: kube.Options{Kubeconfig: c.Kubeconfig},
		DataVolume: uploader.DataVolumeOptions{ReuseIfSame: true}}
	first, err := Import(context.Background(), j)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := testutil.SHA256File(t, qcow2)
	if first.SourceSHA256 != want || first.DataVolume.Reused {
		t.Fatalf("first import %+v", first.DataVolume)
	}
	p.Reset()
	second, err := Import(context.Background(), j)
	if err != nil {
		t.Fatal(err)
	}
	if !second.DataVolume.Reused || p.Received(c.Namespace, "reuse") != nil {
		t.Fatalf("second import sent again: %+v", second.DataVolume)
	}
}

// --pull: CDI (the peer) fetches the source; ferry only reads its header
// to size the volume.
func TestImportPull(t *testing.T) {
	c, p := cluster(t)
	_, raw, _ := fixture(t)
	want, _ := testutil.SHA256File(t, raw)
	srv := httptest.NewServer(http.FileServer(http.Dir(filepath.Dir(raw))))
	defer srv.Close()
	j := ImportJob{
		Source: srv.URL + "/disk.raw", Target: Target{Kind: TargetDV, Name: "pulled"}, Pull: true,
		Fetch: importerOpts("sha256:" + want), Kube: kube.Options{Kubeconfig: c.Kubeconfig},
		DataVolume: uploader.DataVolumeOptions{DataSource: "pulled-image"},
	}
	rep, err := Import(context.Background(), j)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Received(c.Namespace, "pulled"); got == nil || got.SHA256 != want || !rep.DataVolume.Pull {
		t.Fatalf("pulled %+v", got)
	}
	ds := &cdiv1.DataSource{}
	if err := c.Client.Get(context.Background(), client.ObjectKey{Namespace: c.Namespace, Name: "pulled-image"}, ds); err != nil || ds.Spec.Source.PVC.Name != "pulled" {
		t.Fatalf("DataSource %+v %v", ds.Spec, err)
	}
}

func importerOpts(checksum string) importer.Options {
	return importer.Options{Checksum: checksum}
}

func TestImportJobValidate(t *testing.T) {
	tests := []struct {
		name string
		j    ImportJob
		want string
	}{
		{"no-source", ImportJob{Target: Target{Kind: TargetFile, Path: "x"}}, "no source"},
		{"stdin-upload", ImportJob{Source: "-", Target: Target{Kind: TargetDV, Name: "x"}}, "save it to a file"},
		{"pull-to-file", ImportJob{Source: "https://h/x", Target: Target{Kind: TargetFile, Path: "x"}, Pull: true}, "--pull needs"},
		{"pull-local", ImportJob{Source: "/x.qcow2", Target: Target{Kind: TargetDV, Name: "x"}, Pull: true}, "http(s)"},
		{"reuse-file", ImportJob{Source: "/x", Target: Target{Kind: TargetFile, Path: "x"}, DataVolume: uploader.DataVolumeOptions{ReuseIfSame: true}}, "reuse-if-same"},
		{"bad-dv-name", ImportJob{Source: "/x", Target: Target{Kind: TargetDV, Name: "Bad_Name"}}, "DNS-1123"},
		{"bad-store-name", ImportJob{Source: "/x", Target: Target{Kind: TargetStore, Name: "../x"}}, "image name"},
	}
	for _, tt := range tests {
		err := tt.j.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}
