package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hikube/ferry/converter"
	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/importer"
	"github.com/hikube/ferry/pkg/kube"
	"github.com/hikube/ferry/uploader"
)

// TargetKind is where an import goes.
type TargetKind string

const (
	TargetFile   TargetKind = "file"
	TargetStore  TargetKind = "store"
	TargetS3     TargetKind = "s3"
	TargetDV     TargetKind = "dv"
	TargetVMDisk TargetKind = "vmdisk"
)

// Target is a parsed TARGET argument.
type Target struct {
	Kind TargetKind
	// Path for files; Bucket and Key for S3; Namespace (may be empty:
	// the kubeconfig's) and Name for dv:// and vmdisk://; Name for the
	// store.
	Path, Bucket, Key, Namespace, Name string
}

func (t Target) String() string {
	switch t.Kind {
	case TargetFile:
		return t.Path
	case TargetStore:
		return "store:" + t.Name
	case TargetS3:
		return "s3://" + t.Bucket + "/" + t.Key
	}
	ns := ""
	if t.Namespace != "" {
		ns = t.Namespace + "/"
	}
	return string(t.Kind) + "://" + ns + t.Name
}

// ParseTarget reads TARGET: a path or file://PATH, s3://BUCKET/KEY,
// dv://[NAMESPACE/]NAME, vmdisk://[NAMESPACE/]NAME; "" is the local store.
func ParseTarget(s string) (Target, error) {
	if s == "" {
		return Target{Kind: TargetStore}, nil
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return Target{Kind: TargetFile, Path: s}, nil
	}
	switch strings.ToLower(scheme) {
	case "file":
		u, err := url.Parse(s)
		if err != nil || (u.Host != "" && u.Host != "localhost") || u.Path == "" {
			return Target{}, fmt.Errorf("target %s: want file:///PATH", s)
		}
		return Target{Kind: TargetFile, Path: u.Path}, nil
	case "s3":
		b, k, err := uploader.ParseS3URL(s)
		if err != nil {
			return Target{}, fmt.Errorf("target %w", err)
		}
		return Target{Kind: TargetS3, Bucket: b, Key: k}, nil
	case "dv", "vmdisk":
		t := Target{Kind: TargetKind(strings.ToLower(scheme))}
		parts := strings.Split(rest, "/")
		switch len(parts) {
		case 1:
			t.Name = parts[0]
		case 2:
			t.Namespace, t.Name = parts[0], parts[1]
		default:
			return Target{}, fmt.Errorf("target %s: want %s://[NAMESPACE/]NAME", s, scheme)
		}
		if t.Name == "" || (len(parts) == 2 && t.Namespace == "") {
			return Target{}, fmt.Errorf("target %s: want %s://[NAMESPACE/]NAME", s, scheme)
		}
		return t, nil
	}
	return Target{}, fmt.Errorf("target %s: unknown scheme %q (a path, file://, s3://, dv://, vmdisk://)", s, scheme)
}

// ImportJob fetches, converts, verifies and delivers one image.
type ImportJob struct {
	// Source is a path, file://, http(s)://, s3:// URL (see importer).
	Source string
	// Target as parsed by ParseTarget. For the store, Target.Name is the
	// image name (default: the source's base name without extensions) and
	// StoreDir the store (default uploader.DefaultStoreDir).
	Target   Target
	StoreDir string
	// Format skips detection; AllowDir as for ConvertJob.
	Format, AllowDir string
	// Fetch configures the source (checksum, auth, scratch...).
	Fetch importer.Options
	// Workers converts in parallel (0: CPUs).
	Workers int
	// NoSync skips the final fsync of file targets.
	NoSync bool

	// Kube selects the cluster for dv:// and vmdisk://; DataVolume holds
	// the rest (Namespace and Name come from Target).
	Kube       kube.Options
	DataVolume uploader.DataVolumeOptions
	// Pull makes CDI fetch Source itself (http(s) or s3 sources).
	Pull bool
	// PullSecret and PullCertConfigMap are passed to CDI's source.
	PullSecret, PullCertConfigMap string

	// S3 configures s3:// targets (Bucket and Key come from Target).
	S3 uploader.S3Options

	// Progress counts RAW bytes delivered (rewound on a restarted
	// upload); OnStart is told the format and virtual size.
	Progress converter.Progress
	OnStart  func(in *Input)

	// testOpts are extra network options (tests).
	netOpts []uploader.Option
}

// Validate checks the job before any I/O.
func (j *ImportJob) Validate() error {
	if j.Source == "" {
		return errors.New("no source")
	}
	if j.Source == "-" && j.Target.Kind != TargetFile && j.Target.Kind != TargetStore {
		return errors.New("source -: an upload may restart and read its source again; save it to a file first")
	}
	switch j.Target.Kind {
	case TargetFile:
		if j.Target.Path == "" {
			return errors.New("no target path")
		}
	case TargetStore:
		if j.Target.Name == "" {
			j.Target.Name = storeName(j.Source)
		}
		if err := uploader.ValidStoreName(j.Target.Name); err != nil {
			return err
		}
	case TargetS3:
		if j.Pull {
			return errors.New("--pull needs a dv:// or vmdisk:// target")
		}
	case TargetDV, TargetVMDisk:
		o := j.DataVolume
		o.Namespace, o.Name, o.VMDisk = j.Target.Namespace, j.Target.Name, j.Target.Kind == TargetVMDisk
		if err := o.Validate(); err != nil {
			return err
		}
		j.DataVolume = o
		if j.Pull {
			lower := strings.ToLower(j.Source)
			if !strings.HasPrefix(lower, "http://") && !strings.HasPrefix(lower, "https://") && !strings.HasPrefix(lower, "s3://") {
				return errors.New("--pull needs an http(s):// or s3:// source: CDI fetches it itself")
			}
		}
	default:
		return fmt.Errorf("unknown target kind %q", j.Target.Kind)
	}
	if j.Pull && j.Target.Kind != TargetDV && j.Target.Kind != TargetVMDisk {
		return errors.New("--pull needs a dv:// or vmdisk:// target")
	}
	if j.DataVolume.ReuseIfSame && j.Target.Kind != TargetDV && j.Target.Kind != TargetVMDisk {
		return errors.New("--reuse-if-same applies to dv:// and vmdisk:// targets")
	}
	f := j.Fetch // Validate fills defaults: OpenInput validates its own copy
	return f.Validate()
}

// storeName is the source's base name without image and compression
// extensions: debian-12-generic-amd64.qcow2.xz -> debian-12-generic-amd64.
func storeName(src string) string {
	base := src
	if u, err := url.Parse(src); err == nil && u.Scheme != "" {
		base = path.Base(u.Path)
	} else {
		base = filepath.Base(src)
	}
	for {
		ext := strings.ToLower(filepath.Ext(base))
		switch ext {
		case ".gz", ".xz", ".zst", ".bz2", ".qcow2", ".img", ".raw", ".vmdk", ".vhd", ".vhdx", ".vdi", ".iso", ".ova":
			base = strings.TrimSuffix(base, base[len(base)-len(ext):])
			continue
		}
		break
	}
	return base
}

// ImportReport describes a finished import (ferry import --output json).
type ImportReport struct {
	Source     string      `json:"source"`
	Target     string      `json:"target"`
	TargetKind TargetKind  `json:"target_kind"`
	Format     format.Type `json:"format,omitempty"`
	// OVADisk is the archive member imported; OVAManifestChecksum its
	// digest from the archive's manifest, verified.
	OVADisk             string `json:"ova_disk,omitempty"`
	OVAManifestChecksum string `json:"ova_manifest_checksum,omitempty"`
	VirtualSize         int64  `json:"virtual_size"`
	AllocatedBytes      int64  `json:"allocated_bytes,omitempty"`
	SourceSHA256        string `json:"source_sha256,omitempty"`
	RawSHA256           string `json:"raw_sha256,omitempty"`
	// SourceChecksum is the verified "alg:hex" when one was asked for.
	SourceChecksum  string  `json:"source_checksum,omitempty"`
	BytesFetched    int64   `json:"bytes_fetched,omitempty"`
	DurationSeconds float64 `json:"duration_seconds"`

	Path       string                     `json:"path,omitempty"`
	Store      *uploader.StoreRecord      `json:"store,omitempty"`
	S3         *uploader.S3Result         `json:"s3,omitempty"`
	DataVolume *uploader.DataVolumeResult `json:"data_volume,omitempty"`
}

func (j *ImportJob) open(ctx context.Context) (*Input, error) {
	return OpenInput(ctx, j.Source, InputOptions{Fetch: j.Fetch, Format: j.Format, AllowDir: j.AllowDir})
}

// Import runs the job.
func Import(ctx context.Context, j ImportJob) (*ImportReport, error) {
	if err := j.Validate(); err != nil {
		return nil, err
	}
	start := time.Now()
	rep := &ImportReport{Source: redact(j.Source), Target: j.Target.String(), TargetKind: j.Target.Kind}
	var err error
	switch {
	case j.Pull:
		err = j.pull(ctx, rep)
	case j.Target.Kind == TargetFile || j.Target.Kind == TargetStore:
		err = j.toFile(ctx, rep)
	default:
		err = j.toNetwork(ctx, rep)
	}
	if err != nil {
		return nil, err
	}
	rep.DurationSeconds = time.Since(start).Seconds()
	return rep, nil
}

// toFile converts into a local file or the store: random-access writes,
// holes skipped, committed only once the source verified.
func (j *ImportJob) toFile(ctx context.Context, rep *ImportReport) error {
	in, err := j.open(ctx)
	if err != nil {
		return err
	}
	defer in.Close()
	size := max(in.VirtualSize(), 0) // a stream sets it when it knows
	if j.OnStart != nil {
		j.OnStart(in)
	}
	type target interface {
		io.WriterAt
		IsDevice() bool
		Abort() error
	}
	var (
		dst    target
		file   *uploader.File
		entry  *uploader.StoreEntry
		commit func(res *converter.Result, d importer.Digests) error
	)
	if j.Target.Kind == TargetFile {
		file, err = uploader.CreateFile(j.Target.Path, size, uploader.FileOptions{NoSync: j.NoSync})
		if err != nil {
			return fmt.Errorf("create %s: %w", j.Target.Path, err)
		}
		dst = file
		commit = func(*converter.Result, importer.Digests) error { return file.Commit() }
		rep.Path = j.Target.Path
	} else {
		dir := j.StoreDir
		if dir == "" {
			if dir, err = uploader.DefaultStoreDir(); err != nil {
				return err
			}
		}
		st := &uploader.Store{Dir: dir}
		entry, err = st.Create(j.Target.Name, size, uploader.FileOptions{NoSync: j.NoSync})
		if err != nil {
			return err
		}
		dst = entry
		commit = func(res *converter.Result, d importer.Digests) error {
			rec := uploader.StoreRecord{
				Source: in.Name, SourceSHA256: d.SHA256, Format: string(res.Format),
				VirtualSize: res.VirtualSize, AllocatedBytes: res.AllocatedBytes, RawSHA256: res.RawSHA256,
			}
			if err := entry.Commit(rec); err != nil {
				return err
			}
			rep.Store, err = st.Get(j.Target.Name)
			if err == nil {
				rep.Path = rep.Store.Path
			}
			return err
		}
	}
	o := converter.Options{Workers: j.Workers, Digest: true, Progress: j.Progress, WriterAt: dst, WriteZeros: dst.IsDevice()}
	res, err := in.Convert(ctx, o)
	if err != nil {
		dst.Abort()
		return fmt.Errorf("convert %s: %w", in.Name, err)
	}
	d, err := in.Verify(ctx)
	if err != nil {
		dst.Abort()
		return fmt.Errorf("verify %s: %w", in.Name, err)
	}
	if err := commit(res, d); err != nil {
		return fmt.Errorf("write %s: %w", rep.Target, err)
	}
	fillReport(rep, res, d)
	rep.OVADisk, rep.OVAManifestChecksum = in.Member, in.ManifestChecksum
	return nil
}

func fillReport(rep *ImportReport, res *converter.Result, d importer.Digests) {
	rep.Format, rep.VirtualSize, rep.AllocatedBytes, rep.RawSHA256 = res.Format, res.VirtualSize, res.AllocatedBytes, res.RawSHA256
	rep.SourceSHA256, rep.SourceChecksum, rep.BytesFetched = d.SHA256, d.Checksum, d.BytesFetched
}

// rawSource turns the job into an uploader.Image: each Open converts the
// source again (a broken upload restarts from zero), streaming the RAW in
// order; the source's verification verdict replaces io.EOF, so a
// mismatch never completes an upload. first is reused by the first Open;
// release closes it if no Open took it.
func (j *ImportJob) rawSource(first *Input, rep *ImportReport) (img uploader.Image, release func()) {
	var mu sync.Mutex
	var last importer.Digests
	img = uploader.Image{
		VirtualSize: first.VirtualSize(),
		SourceURL:   redact(j.Source),
		SourceDigest: func() string {
			mu.Lock()
			defer mu.Unlock()
			return last.SHA256
		},
	}
	img.Open = func(ctx context.Context) (io.ReadCloser, error) {
		mu.Lock()
		op := first
		first = nil
		mu.Unlock()
		if op == nil {
			var err error
			if op, err = j.open(ctx); err != nil {
				return nil, err
			}
		}
		pr, pw := io.Pipe()
		ctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer op.Close()
			res, err := op.Convert(ctx, converter.Options{Workers: j.Workers, Stream: pw})
			if err != nil {
				pw.CloseWithError(fmt.Errorf("convert %s: %w", op.Name, err))
				return
			}
			d, err := op.Verify(ctx)
			if err != nil {
				pw.CloseWithError(fmt.Errorf("verify %s: %w", op.Name, err))
				return
			}
			mu.Lock()
			last = d
			rep.Format, rep.AllocatedBytes, rep.VirtualSize = res.Format, res.AllocatedBytes, res.VirtualSize
			rep.SourceChecksum, rep.BytesFetched = d.Checksum, rep.BytesFetched+d.BytesFetched
			rep.OVADisk, rep.OVAManifestChecksum = op.Member, op.ManifestChecksum
			mu.Unlock()
			pw.Close()
		}()
		return &pipeSource{PipeReader: pr, cancel: cancel, done: done}, nil
	}
	release = func() {
		mu.Lock()
		op := first
		first = nil
		mu.Unlock()
		if op != nil {
			op.Close()
		}
	}
	return img, release
}

// pipeSource stops the converter when the uploader closes early.
type pipeSource struct {
	*io.PipeReader
	cancel context.CancelFunc
	done   chan struct{}
}

func (p *pipeSource) Close() error {
	p.cancel()
	p.PipeReader.CloseWithError(errors.New("upload attempt ended"))
	<-p.done
	return nil
}

// upFrontSHA256 is the source digest known before the transfer, which
// --reuse-if-same compares: a sha256 --checksum, else a local file hashed
// now (one extra sequential read).
func (j *ImportJob) upFrontSHA256(ctx context.Context) (string, error) {
	if alg, sum, err := importer.ParseChecksum(j.Fetch.Checksum); err == nil && alg == "sha256" {
		return sum, nil
	}
	lower := strings.ToLower(j.Source)
	if strings.HasPrefix(lower, "http://") || strings.HasPrefix(lower, "https://") || strings.HasPrefix(lower, "s3://") {
		return "", nil
	}
	p := j.Source
	if strings.HasPrefix(lower, "file://") {
		u, err := url.Parse(j.Source)
		if err != nil {
			return "", err
		}
		p = u.Path
	}
	f, err := os.Open(p)
	if err != nil {
		return "", fmt.Errorf("source: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, &ctxReader{ctx, f}); err != nil {
		return "", fmt.Errorf("hash %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}

// toNetwork streams the RAW image to S3 or into a DataVolume/VMDisk.
func (j *ImportJob) toNetwork(ctx context.Context, rep *ImportReport) error {
	op, err := j.open(ctx)
	if err != nil {
		return err
	}
	if j.OnStart != nil {
		j.OnStart(op)
	}
	rep.Format, rep.VirtualSize = op.Type, op.VirtualSize()
	img, release := j.rawSource(op, rep)
	defer release()
	if j.Target.Kind == TargetS3 {
		o := j.S3
		o.Bucket, o.Key = j.Target.Bucket, j.Target.Key
		o.Progress = j.Progress
		t, err := uploader.NewS3Target(o)
		if err != nil {
			return err
		}
		res, err := t.Upload(ctx, img)
		if err != nil {
			return err
		}
		rep.S3, rep.RawSHA256, rep.SourceSHA256 = res, res.RawSHA256, img.SourceDigest()
		return nil
	}
	o := j.DataVolume
	o.Progress = j.Progress
	if o.ReuseIfSame {
		if img.SourceSHA256, err = j.upFrontSHA256(ctx); err != nil {
			return err
		}
	}
	t, err := uploader.NewDataVolumeTarget(o, append([]uploader.Option{uploader.WithKubeOptions(j.Kube)}, j.netOpts...)...)
	if err != nil {
		return err
	}
	res, err := t.Upload(ctx, img)
	if err != nil {
		return err
	}
	rep.Target = t.String()
	rep.DataVolume, rep.RawSHA256, rep.SourceSHA256 = res, res.RawSHA256, res.SourceSHA256
	return nil
}

// pull creates a DataVolume that makes CDI fetch the source. The image is
// opened here only to learn its virtual size (header reads).
func (j *ImportJob) pull(ctx context.Context, rep *ImportReport) error {
	op, err := j.open(ctx)
	if err != nil {
		return err
	}
	size, typ := op.VirtualSize(), op.Type
	op.Close()
	if size < 0 {
		// A compressed source: CDI decompresses it, but ferry cannot
		// learn the virtual size without reading it all.
		if j.DataVolume.Size <= 0 {
			return fmt.Errorf("pull %s: a %s-compressed image's virtual size is unknown before it is read: pass --size", redact(j.Source), op.Wrapper)
		}
		size = j.DataVolume.Size
	}
	rep.Format, rep.VirtualSize = typ, size
	src := uploader.PullSource{URL: j.Source, SecretRef: j.PullSecret, CertConfigMap: j.PullCertConfigMap, VirtualSize: size}
	if alg, sum, err := importer.ParseChecksum(j.Fetch.Checksum); err == nil && alg == "sha256" {
		src.SHA256 = sum
	}
	for k, vs := range j.Fetch.Headers {
		for _, v := range vs {
			src.ExtraHeaders = append(src.ExtraHeaders, k+": "+v)
		}
	}
	if strings.HasPrefix(strings.ToLower(j.Source), "s3://") {
		b, k, err := uploader.ParseS3URL(j.Source)
		if err != nil {
			return err
		}
		s3 := j.S3
		if err := (&uploader.S3Options{Bucket: b, Key: k, Endpoint: s3.Endpoint}).Validate(); err != nil {
			return err
		}
		ep := s3.Endpoint
		if ep == "" {
			ep = os.Getenv("AWS_ENDPOINT_URL_S3")
		}
		if ep == "" {
			ep = os.Getenv("AWS_ENDPOINT_URL")
		}
		if ep == "" {
			ep = "s3.amazonaws.com"
		}
		if !strings.Contains(ep, "://") {
			ep = "https://" + ep
		}
		// CDI's source.s3 takes the object's URL.
		src.URL, src.S3 = strings.TrimRight(ep, "/")+"/"+b+"/"+k, true
	}
	o := j.DataVolume
	t, err := uploader.NewDataVolumeTarget(o, append([]uploader.Option{uploader.WithKubeOptions(j.Kube)}, j.netOpts...)...)
	if err != nil {
		return err
	}
	res, err := t.Pull(ctx, src)
	if err != nil {
		return err
	}
	rep.Target = t.String()
	rep.DataVolume, rep.SourceSHA256 = res, res.SourceSHA256
	return nil
}

// redact drops credentials and query strings from URLs shown to people.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return s
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}
