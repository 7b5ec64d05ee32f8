package uploader

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hikube/ferry/pkg/kube"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Annotations and labels ferry records on what it creates. Label values
// are limited to 63 characters, so labels carry a selectable short form
// and annotations the full values.
const (
	AnnImmediateBinding = "cdi.kubevirt.io/storage.bind.immediate.requested"
	AnnSource           = "ferry.hikube.io/source"
	AnnSourceSHA256     = "ferry.hikube.io/source-sha256"
	AnnRawSHA256        = "ferry.hikube.io/raw-sha256"
	AnnVirtualSize      = "ferry.hikube.io/virtual-size"
	LabelManagedBy      = "app.kubernetes.io/managed-by"
	LabelSourceSHA256   = "ferry.hikube.io/source-sha256"
	LabelSourceHost     = "ferry.hikube.io/source-host"
	managedBy           = "ferry"
)

// Errors a caller may test for with errors.Is.
var (
	ErrExists       = errors.New("already exists")
	ErrTooSmall     = errors.New("size smaller than the image's virtual size")
	ErrWaitConsumer = errors.New("DataVolume waits for a first consumer")
	ErrPending      = errors.New("DataVolume pending population")
	ErrQuota        = errors.New("quota exceeded")
	ErrFailed       = errors.New("DataVolume failed")
	ErrTimeout      = errors.New("timed out")
	ErrRejected     = errors.New("upload rejected")
)

// DataVolumeOptions describe a DataVolume (or VMDisk) target.
type DataVolumeOptions struct {
	// Namespace and Name of the DataVolume, or of the VMDisk when VMDisk
	// is set (its DataVolume is then vm-disk-NAME, made by Cozystack).
	Namespace, Name string
	VMDisk          bool
	// Optical marks a VMDisk as a CD-ROM (ISOs).
	Optical bool

	// StorageClass (default "replicated"), VolumeMode (default Block) and
	// AccessMode (default ReadWriteMany: live migration needs it).
	StorageClass string
	VolumeMode   corev1.PersistentVolumeMode
	AccessMode   corev1.PersistentVolumeAccessMode
	// Size of the volume; 0 is the virtual size rounded up to 1 MiB. A
	// size below the virtual size is refused before any transfer. CDI
	// adds the filesystem overhead to Filesystem volumes itself (storage
	// API); PVCSize in the result says what it will claim.
	Size int64
	// NoBindImmediate leaves out the bind-immediate annotation: on
	// WaitForFirstConsumer storage the upload then cannot start.
	NoBindImmediate bool

	// Replace deletes an existing object of the same name first;
	// ReuseIfSame keeps it, doing nothing, when it holds the same source
	// digest and Succeeded. Otherwise an existing object is an error.
	Replace, ReuseIfSame bool

	// Compression of the stream (default none).
	Compression Compression
	// Retries is how many times a broken transfer restarts (default 3;
	// -1 for none).
	Retries int

	// UploadProxyURL overrides CDIConfig's; CAFile the proxy's CA
	// (default: the cdi-uploadproxy-signer-bundle ConfigMap, then system
	// roots); Insecure skips verification. CDINamespaces are searched for
	// the ConfigMap (default cdi, cozy-kubevirt-cdi, kubevirt-cdi).
	UploadProxyURL string
	CAFile         string
	Insecure       bool
	CDINamespaces  []string

	// ReadyTimeout bounds the wait for UploadReady (and for 503s),
	// DoneTimeout the wait for Succeeded after the transfer (defaults 5
	// and 30 minutes).
	ReadyTimeout, DoneTimeout time.Duration

	// DataSource, if set, names a CDI DataSource created or updated to
	// point at the result.
	DataSource string

	// KeepOnFailure leaves a DataVolume ferry created when the import
	// fails (default: deleted, so nothing half-written looks usable).
	KeepOnFailure bool

	// Progress is told of RAW bytes sent.
	Progress Progress
}

// Validate checks the options and fills defaults.
func (o *DataVolumeOptions) Validate() error {
	if o.Name == "" {
		return errors.New("no DataVolume name")
	}
	name := o.Name
	if o.VMDisk {
		name = "vm-disk-" + o.Name
	}
	if errs := dns1123(name); errs != "" {
		return fmt.Errorf("name %q: %s", name, errs)
	}
	if o.StorageClass == "" {
		o.StorageClass = "replicated"
	}
	switch o.VolumeMode {
	case "":
		o.VolumeMode = corev1.PersistentVolumeBlock
	case corev1.PersistentVolumeBlock, corev1.PersistentVolumeFilesystem:
	default:
		return fmt.Errorf("volume mode %q (Block or Filesystem)", o.VolumeMode)
	}
	switch o.AccessMode {
	case "":
		o.AccessMode = corev1.ReadWriteMany
	case corev1.ReadWriteMany, corev1.ReadWriteOnce, corev1.ReadOnlyMany, corev1.ReadWriteOncePod:
	default:
		return fmt.Errorf("access mode %q", o.AccessMode)
	}
	if o.Size < 0 {
		return fmt.Errorf("negative size %d", o.Size)
	}
	if o.Replace && o.ReuseIfSame {
		return errors.New("replace and reuse-if-same exclude each other")
	}
	c, err := ParseCompression(string(o.Compression))
	if err != nil {
		return err
	}
	o.Compression = c
	if o.Retries == 0 {
		o.Retries = 3
	} else if o.Retries < 0 {
		o.Retries = 0
	}
	if o.UploadProxyURL != "" {
		if _, err := proxyURL(o.UploadProxyURL); err != nil {
			return err
		}
	}
	if o.CAFile != "" && o.Insecure {
		return errors.New("ca-file and insecure exclude each other")
	}
	if len(o.CDINamespaces) == 0 {
		o.CDINamespaces = []string{"cdi", "cozy-kubevirt-cdi", "kubevirt-cdi"}
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 5 * time.Minute
	}
	if o.DoneTimeout == 0 {
		o.DoneTimeout = 30 * time.Minute
	}
	if o.DataSource != "" {
		if errs := dns1123(o.DataSource); errs != "" {
			return fmt.Errorf("datasource %q: %s", o.DataSource, errs)
		}
	}
	return nil
}

// dns1123 checks a DNS-1123 subdomain (object names) and says what is wrong.
func dns1123(s string) string {
	if len(s) > 253 {
		return "longer than 253 characters"
	}
	for i, label := range strings.Split(s, ".") {
		if label == "" {
			return "empty label"
		}
		for j, r := range label {
			ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' && j > 0 && j < len(label)-1
			if !ok {
				return fmt.Sprintf("not a lowercase DNS-1123 name (label %d, %q)", i+1, label)
			}
		}
	}
	return ""
}

// Option configures a target's network clients.
type Option func(*netConfig)

type netConfig struct {
	kube     *kube.Client
	kubeOpts kube.Options
	http     *http.Client
	now      func() time.Time
}

// WithKube uses an existing Kubernetes client.
func WithKube(c *kube.Client) Option { return func(n *netConfig) { n.kube = c } }

// WithKubeOptions builds the Kubernetes client from kubectl-style options.
func WithKubeOptions(o kube.Options) Option { return func(n *netConfig) { n.kubeOpts = o } }

// WithHTTPClient uses c for the upload proxy (its TLS settings then win
// over CAFile/Insecure).
func WithHTTPClient(c *http.Client) Option { return func(n *netConfig) { n.http = c } }

// DataVolumeTarget uploads RAW images into CDI DataVolumes.
type DataVolumeTarget struct {
	o   DataVolumeOptions
	kc  *kube.Client
	hc  *http.Client
	ns  string
	dv  string // DataVolume name
	ref string // dv://ns/name or vmdisk://ns/name
}

// PhaseTime records when a phase was first seen.
type PhaseTime struct {
	Phase string    `json:"phase"`
	At    time.Time `json:"at"`
}

// DataVolumeResult describes a finished import.
type DataVolumeResult struct {
	Target     string `json:"target"`
	Namespace  string `json:"namespace"`
	DataVolume string `json:"data_volume"`
	VMDisk     string `json:"vm_disk,omitempty"`
	DataSource string `json:"data_source,omitempty"`
	// Size is the DataVolume's storage request; PVCSize what CDI claims
	// (Filesystem volumes add the filesystem overhead).
	Size    int64 `json:"size"`
	PVCSize int64 `json:"pvc_size"`
	// Reused: an identical image was there already; nothing was sent.
	Reused bool `json:"reused,omitempty"`
	// Pull: CDI imported from the source itself.
	Pull         bool   `json:"pull,omitempty"`
	RawSHA256    string `json:"raw_sha256,omitempty"`
	SourceSHA256 string `json:"source_sha256,omitempty"`
	// RawBytes went through the stream; WireBytes over the network
	// (compressed); Attempts counts transfers started.
	RawBytes       int64         `json:"raw_bytes"`
	WireBytes      int64         `json:"wire_bytes"`
	Attempts       int           `json:"attempts"`
	TokenRequests  int           `json:"token_requests"`
	Async          bool          `json:"async"`
	Compression    Compression   `json:"compression"`
	UploadProxyURL string        `json:"upload_proxy_url,omitempty"`
	Phases         []PhaseTime   `json:"phases"`
	WaitReady      time.Duration `json:"wait_ready_ns"`
	Transfer       time.Duration `json:"transfer_ns"`
	WaitDone       time.Duration `json:"wait_done_ns"`
}

// NewDataVolumeTarget validates o and connects the clients.
func NewDataVolumeTarget(o DataVolumeOptions, opts ...Option) (*DataVolumeTarget, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	n := netConfig{}
	for _, f := range opts {
		f(&n)
	}
	t := &DataVolumeTarget{o: o, kc: n.kube, hc: n.http}
	if t.kc == nil {
		kc, err := kube.New(n.kubeOpts)
		if err != nil {
			return nil, err
		}
		t.kc = kc
	}
	t.ns = o.Namespace
	if t.ns == "" {
		t.ns = t.kc.Namespace
	}
	t.dv = o.Name
	scheme := "dv"
	if o.VMDisk {
		t.dv = "vm-disk-" + o.Name
		scheme = "vmdisk"
	}
	t.ref = scheme + "://" + t.ns + "/" + o.Name
	return t, nil
}

// String is the target's URL form (dv://ns/name).
func (t *DataVolumeTarget) String() string { return t.ref }

func (t *DataVolumeTarget) fail(err error) error {
	return fmt.Errorf("upload %s: %w", t.ref, err)
}

// requestedSize is the DataVolume's storage request for img.
func (t *DataVolumeTarget) requestedSize(virtual int64) (int64, error) {
	if virtual <= 0 {
		if t.o.Size <= 0 {
			return 0, errors.New("the image's virtual size is unknown before the stream ends (a compressed RAW): pass a size")
		}
		return t.o.Size, nil
	}
	if t.o.Size > 0 {
		if t.o.Size < virtual {
			return 0, fmt.Errorf("%w: --size %d < %d bytes", ErrTooSmall, t.o.Size, virtual)
		}
		return t.o.Size, nil
	}
	const mib = 1 << 20
	return (virtual + mib - 1) / mib * mib, nil
}

// Upload creates the DataVolume (or VMDisk), streams img into it through
// the upload proxy and waits until CDI reports Succeeded.
func (t *DataVolumeTarget) Upload(ctx context.Context, img Image) (*DataVolumeResult, error) {
	if err := img.validate(); err != nil {
		return nil, t.fail(err)
	}
	size, err := t.requestedSize(img.VirtualSize)
	if err != nil {
		return nil, t.fail(err)
	}
	res := &DataVolumeResult{Target: t.ref, Namespace: t.ns, DataVolume: t.dv, Size: size, Compression: t.o.Compression, DataSource: t.o.DataSource}
	if t.o.VMDisk {
		res.VMDisk = t.o.Name
	}
	res.PVCSize = t.pvcSize(ctx, size)

	reused, err := t.prepare(ctx, img.SourceSHA256, res)
	if err != nil || reused {
		if err == nil && t.o.DataSource != "" {
			err = t.ensureDataSource(ctx)
		}
		if err != nil {
			return nil, t.fail(err)
		}
		return res, nil
	}
	// Proxy URL and CA before creating anything: a misconfiguration then
	// leaves nothing behind.
	hc, base, err := t.proxyClient(ctx)
	if err != nil {
		return nil, t.fail(err)
	}
	res.UploadProxyURL = base
	if err := t.create(ctx, size, img, nil); err != nil {
		return nil, t.fail(err)
	}
	created := true
	ok := false
	defer func() {
		if !ok && created && !t.o.KeepOnFailure {
			t.cleanup()
		}
	}()

	start := time.Now()
	dv, err := t.waitFor(ctx, t.o.ReadyTimeout, res, "UploadReady", func(dv *cdiv1.DataVolume) (bool, error) {
		return dv.Status.Phase == cdiv1.UploadReady, uploadBlocked(dv)
	})
	res.WaitReady = time.Since(start)
	if err != nil {
		if t.o.VMDisk && errors.Is(err, ErrWaitConsumer) {
			err = fmt.Errorf("%w: the VMDisk's DataVolume %s lacks the %s annotation, so its volume binds only when a VM uses it; use a storage class with Immediate binding", ErrWaitConsumer, t.dv, AnnImmediateBinding)
		}
		return nil, t.fail(err)
	}
	start = time.Now()
	up := &uploadSession{t: t, hc: hc, base: base, dv: dv, res: res}
	stream, err := up.run(ctx, img)
	res.Transfer = time.Since(start)
	if err != nil {
		return nil, t.fail(err)
	}
	res.RawSHA256 = stream.sum()
	res.RawBytes, _ = stream.counts()
	// A source verified only at Close must not leave a Succeeded volume.
	if err := stream.sourceErr(); err != nil {
		return nil, t.fail(fmt.Errorf("source: %w", err))
	}
	res.SourceSHA256 = img.sourceSHA256()

	start = time.Now()
	_, err = t.waitFor(ctx, t.o.DoneTimeout, res, "Succeeded", func(dv *cdiv1.DataVolume) (bool, error) {
		switch dv.Status.Phase {
		case cdiv1.Succeeded:
			return true, nil
		case cdiv1.Failed:
			return false, fmt.Errorf("%w after upload: %s", ErrFailed, conditionMessage(dv))
		}
		return false, nil
	})
	res.WaitDone = time.Since(start)
	if err != nil {
		return nil, t.fail(err)
	}
	if err := t.record(ctx, img, res); err != nil {
		return nil, t.fail(err)
	}
	if t.o.DataSource != "" {
		if err := t.ensureDataSource(ctx); err != nil {
			return nil, t.fail(err)
		}
	}
	ok = true
	return res, nil
}

// pvcSize is what CDI will claim for a storage request of size: the
// storage API adds the filesystem overhead (CDIConfig, per class or
// global) to Filesystem volumes, aligned like CDI's GetRequiredSpace.
func (t *DataVolumeTarget) pvcSize(ctx context.Context, size int64) int64 {
	if t.o.VolumeMode != corev1.PersistentVolumeFilesystem {
		return size
	}
	cfg := &cdiv1.CDIConfig{}
	overhead := 0.0
	if err := t.kc.Get(ctx, client.ObjectKey{Name: "config"}, cfg); err == nil && cfg.Status.FilesystemOverhead != nil {
		p := cfg.Status.FilesystemOverhead.Global
		if v, ok := cfg.Status.FilesystemOverhead.StorageClass[t.o.StorageClass]; ok {
			p = v
		}
		overhead, _ = strconv.ParseFloat(string(p), 64)
	}
	const mib = 1 << 20
	aligned := (size + mib - 1) / mib * mib
	f := float64(aligned) * (1 + overhead)
	n := int64(f)
	if float64(n) < f {
		n++
	}
	return n
}

// prepare handles an existing object of the same name: reuse it,
// replace it, or refuse.
func (t *DataVolumeTarget) prepare(ctx context.Context, sourceSHA string, res *DataVolumeResult) (reused bool, err error) {
	var existing client.Object
	if t.o.VMDisk {
		vd := newVMDisk()
		err = t.kc.Get(ctx, client.ObjectKey{Namespace: t.ns, Name: t.o.Name}, vd)
		existing = vd
	} else {
		dv := &cdiv1.DataVolume{}
		err = t.kc.Get(ctx, client.ObjectKey{Namespace: t.ns, Name: t.dv}, dv)
		existing = dv
	}
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get: %w", err)
	}
	kind := "DataVolume"
	if t.o.VMDisk {
		kind = "VMDisk"
	}
	switch {
	case t.o.ReuseIfSame:
		dv := &cdiv1.DataVolume{}
		if err := t.kc.Get(ctx, client.ObjectKey{Namespace: t.ns, Name: t.dv}, dv); err != nil && !apierrors.IsNotFound(err) {
			return false, fmt.Errorf("get DataVolume: %w", err)
		}
		have := dv.Annotations[AnnSourceSHA256]
		if sourceSHA != "" && have == sourceSHA && dv.Status.Phase == cdiv1.Succeeded {
			res.Reused = true
			res.SourceSHA256 = have
			res.RawSHA256 = dv.Annotations[AnnRawSHA256]
			res.Phases = append(res.Phases, PhaseTime{Phase: string(dv.Status.Phase), At: time.Now()})
			return true, nil
		}
		why := "it holds another image"
		switch {
		case sourceSHA == "":
			why = "the source digest is not known before the transfer"
		case have == "":
			why = "it records no source digest"
		case have == sourceSHA:
			why = fmt.Sprintf("it is in phase %q, not Succeeded", dv.Status.Phase)
		}
		return false, fmt.Errorf("%w: %s %s/%s exists and cannot be reused: %s (use --replace)", ErrExists, kind, t.ns, existing.GetName(), why)
	case t.o.Replace:
		return false, t.deleteAndWait(ctx, existing)
	}
	return false, fmt.Errorf("%w: %s %s/%s (use --replace or --reuse-if-same)", ErrExists, kind, t.ns, existing.GetName())
}

func newVMDisk() *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion("apps.cozystack.io/v1alpha1")
	u.SetKind("VMDisk")
	return u
}

// deleteAndWait deletes obj (and for a VMDisk waits for its DataVolume
// too) until the names are free.
func (t *DataVolumeTarget) deleteAndWait(ctx context.Context, obj client.Object) error {
	// Background: the name is free at once and the garbage collector
	// removes the PVC (foreground deletion would wait for it).
	if err := t.kc.Delete(ctx, obj, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete %s: %w", obj.GetName(), err)
	}
	deadline := time.Now().Add(t.o.ReadyTimeout)
	for {
		gone := true
		if t.o.VMDisk {
			if err := t.kc.Get(ctx, client.ObjectKeyFromObject(obj), newVMDisk()); !apierrors.IsNotFound(err) {
				gone = false
			}
		}
		if err := t.kc.Get(ctx, client.ObjectKey{Namespace: t.ns, Name: t.dv}, &cdiv1.DataVolume{}); !apierrors.IsNotFound(err) {
			gone = false
		}
		if gone {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: waiting for %s to be deleted", ErrTimeout, obj.GetName())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// create makes the DataVolume (source from src, or upload), or the
// VMDisk.
func (t *DataVolumeTarget) create(ctx context.Context, size int64, img Image, src *cdiv1.DataVolumeSource) error {
	ann := map[string]string{}
	if img.VirtualSize > 0 {
		ann[AnnVirtualSize] = strconv.FormatInt(img.VirtualSize, 10)
	}
	if img.SourceURL != "" {
		ann[AnnSource] = redactURL(img.SourceURL)
	}
	labels := map[string]string{LabelManagedBy: managedBy}
	if h := sourceHost(img.SourceURL); h != "" {
		labels[LabelSourceHost] = h
	}
	if t.o.VMDisk {
		vd := newVMDisk()
		vd.SetNamespace(t.ns)
		vd.SetName(t.o.Name)
		vd.SetAnnotations(ann)
		vd.SetLabels(labels)
		source := map[string]any{"upload": map[string]any{}}
		if src != nil && src.HTTP != nil {
			source = map[string]any{"http": map[string]any{"url": src.HTTP.URL}}
		}
		vd.Object["spec"] = map[string]any{
			"source":       source,
			"optical":      t.o.Optical,
			"storage":      resource.NewQuantity(size, resource.BinarySI).String(),
			"storageClass": t.o.StorageClass,
		}
		if err := t.kc.Create(ctx, vd); err != nil {
			return fmt.Errorf("create VMDisk %s/%s: %w", t.ns, t.o.Name, explainCreate(err))
		}
		return nil
	}
	if src == nil {
		src = &cdiv1.DataVolumeSource{Upload: &cdiv1.DataVolumeSourceUpload{}}
	}
	if !t.o.NoBindImmediate {
		ann[AnnImmediateBinding] = ""
	}
	dv := &cdiv1.DataVolume{
		ObjectMeta: metav1.ObjectMeta{Name: t.dv, Namespace: t.ns, Annotations: ann, Labels: labels},
		Spec: cdiv1.DataVolumeSpec{
			ContentType: cdiv1.DataVolumeKubeVirt,
			Source:      src,
			Storage: &cdiv1.StorageSpec{
				AccessModes:      []corev1.PersistentVolumeAccessMode{t.o.AccessMode},
				VolumeMode:       ptr.To(t.o.VolumeMode),
				StorageClassName: ptr.To(t.o.StorageClass),
				Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI),
				}},
			},
		},
	}
	if err := t.kc.Create(ctx, dv); err != nil {
		return fmt.Errorf("create DataVolume %s/%s: %w", t.ns, t.dv, explainCreate(err))
	}
	return nil
}

func explainCreate(err error) error {
	if apierrors.IsForbidden(err) && strings.Contains(err.Error(), "exceeded quota") {
		return fmt.Errorf("%w: %v", ErrQuota, err)
	}
	if apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("%w: %v", ErrExists, err)
	}
	return err
}

// cleanup deletes what a failed import created, so nothing looks usable.
// It runs on its own context: the caller's may be what was cancelled.
func (t *DataVolumeTarget) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if t.o.VMDisk {
		vd := newVMDisk()
		vd.SetNamespace(t.ns)
		vd.SetName(t.o.Name)
		t.kc.Delete(ctx, vd)
	}
	t.kc.Delete(ctx, &cdiv1.DataVolume{ObjectMeta: metav1.ObjectMeta{Namespace: t.ns, Name: t.dv}})
}

// uploadBlocked turns the phases and conditions that stop an upload from
// becoming ready into clear errors.
func uploadBlocked(dv *cdiv1.DataVolume) error {
	if err := quotaError(dv); err != nil {
		return err
	}
	switch dv.Status.Phase {
	case cdiv1.WaitForFirstConsumer:
		sc := ""
		if dv.Spec.Storage != nil && dv.Spec.Storage.StorageClassName != nil {
			sc = " (storage class " + *dv.Spec.Storage.StorageClassName + ")"
		}
		return fmt.Errorf("%w: its volume%s binds only when a VM uses it, so no upload pod can start; keep the %s annotation (do not pass --no-bind-immediate) or use a storage class with Immediate binding",
			ErrWaitConsumer, sc, AnnImmediateBinding)
	case cdiv1.PendingPopulation:
		return fmt.Errorf("%w: CDI's populator waits for the PVC to be consumed (WaitForFirstConsumer storage without immediate binding): %s", ErrPending, conditionMessage(dv))
	case cdiv1.Failed:
		return fmt.Errorf("%w: %s", ErrFailed, conditionMessage(dv))
	case cdiv1.Succeeded:
		return fmt.Errorf("%w: DataVolume is already Succeeded: someone else uploaded to it", ErrRejected)
	}
	return nil
}

func quotaError(dv *cdiv1.DataVolume) error {
	for _, c := range dv.Status.Conditions {
		if c.Reason == "ErrExceededQuota" {
			return fmt.Errorf("%w: %s", ErrQuota, c.Message)
		}
	}
	return nil
}

func conditionMessage(dv *cdiv1.DataVolume) string {
	var parts []string
	for _, c := range dv.Status.Conditions {
		if c.Message != "" || c.Reason != "" {
			parts = append(parts, fmt.Sprintf("%s=%s %s: %s", c.Type, c.Status, c.Reason, c.Message))
		}
	}
	if len(parts) == 0 {
		return "phase " + string(dv.Status.Phase) + ", no condition message"
	}
	return strings.Join(parts, "; ")
}

// waitFor watches the DataVolume until done says so, recording phases.
// A DataVolume that does not exist yet (a VMDisk's) is waited for too.
func (t *DataVolumeTarget) waitFor(ctx context.Context, timeout time.Duration, res *DataVolumeResult, what string,
	done func(*cdiv1.DataVolume) (bool, error)) (*cdiv1.DataVolume, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last *cdiv1.DataVolume
	check := func(dv *cdiv1.DataVolume) (bool, error) {
		last = dv
		ph := string(dv.Status.Phase)
		if ph != "" && (len(res.Phases) == 0 || res.Phases[len(res.Phases)-1].Phase != ph) {
			res.Phases = append(res.Phases, PhaseTime{Phase: ph, At: time.Now()})
		}
		return done(dv)
	}
	for {
		list := &cdiv1.DataVolumeList{}
		err := t.kc.List(ctx, list, client.InNamespace(t.ns), client.MatchingFields{"metadata.name": t.dv})
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			return nil, fmt.Errorf("wait for %s: list DataVolume: %w", what, err)
		}
		if len(list.Items) > 0 {
			dv := &list.Items[0]
			if ok, err := check(dv); ok || err != nil {
				return dv, err
			}
		}
		w, err := t.kc.Watch(ctx, &cdiv1.DataVolumeList{}, client.InNamespace(t.ns),
			client.MatchingFields{"metadata.name": t.dv}, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: list.ResourceVersion}})
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			return nil, fmt.Errorf("wait for %s: watch DataVolume: %w", what, err)
		}
		for ev := range w.ResultChan() {
			switch ev.Type {
			case watch.Added, watch.Modified:
				dv, ok := ev.Object.(*cdiv1.DataVolume)
				if !ok {
					continue
				}
				if ok, err := check(dv); ok || err != nil {
					w.Stop()
					return dv, err
				}
			case watch.Deleted:
				w.Stop()
				return nil, fmt.Errorf("DataVolume %s/%s was deleted while waiting for %s", t.ns, t.dv, what)
			}
		}
		w.Stop()
		if ctx.Err() != nil {
			break
		}
		// The watch expired (or the server closed it): list again.
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		state := "does not exist"
		if last != nil {
			state = fmt.Sprintf("is %q (%s)", last.Status.Phase, conditionMessage(last))
		}
		return nil, fmt.Errorf("%w after %v waiting for DataVolume %s/%s to be %s: it %s", ErrTimeout, timeout, t.ns, t.dv, what, state)
	}
	return nil, ctx.Err()
}

// record writes the digests on the DataVolume (and VMDisk) once the image
// is in: reuse-if-same trusts only these.
func (t *DataVolumeTarget) record(ctx context.Context, img Image, res *DataVolumeResult) error {
	ann := map[string]any{}
	labels := map[string]any{}
	if res.RawSHA256 != "" {
		ann[AnnRawSHA256] = res.RawSHA256
	}
	if res.SourceSHA256 != "" {
		ann[AnnSourceSHA256] = res.SourceSHA256
		labels[LabelSourceSHA256] = res.SourceSHA256[:min(63, len(res.SourceSHA256))]
	}
	patch := map[string]any{"metadata": map[string]any{"annotations": ann, "labels": labels}}
	objs := []client.Object{&cdiv1.DataVolume{ObjectMeta: metav1.ObjectMeta{Namespace: t.ns, Name: t.dv}}}
	if t.o.VMDisk {
		vd := newVMDisk()
		vd.SetNamespace(t.ns)
		vd.SetName(t.o.Name)
		objs = append(objs, vd)
	}
	for _, obj := range objs {
		if err := t.kc.Patch(ctx, obj, client.RawPatch(types.MergePatchType, mustJSON(patch))); err != nil {
			return fmt.Errorf("record digests on %s: %w", obj.GetName(), err)
		}
	}
	return nil
}

// ensureDataSource points the DataSource at the DataVolume's PVC.
func (t *DataVolumeTarget) ensureDataSource(ctx context.Context) error {
	src := cdiv1.DataSourceSource{PVC: &cdiv1.DataVolumeSourcePVC{Namespace: t.ns, Name: t.dv}}
	ds := &cdiv1.DataSource{}
	err := t.kc.Get(ctx, client.ObjectKey{Namespace: t.ns, Name: t.o.DataSource}, ds)
	if apierrors.IsNotFound(err) {
		ds = &cdiv1.DataSource{
			ObjectMeta: metav1.ObjectMeta{Namespace: t.ns, Name: t.o.DataSource, Labels: map[string]string{LabelManagedBy: managedBy}},
			Spec:       cdiv1.DataSourceSpec{Source: src},
		}
		if err := t.kc.Create(ctx, ds); err != nil {
			return fmt.Errorf("create DataSource %s/%s: %w", t.ns, t.o.DataSource, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get DataSource %s/%s: %w", t.ns, t.o.DataSource, err)
	}
	ds.Spec.Source = src
	if err := t.kc.Update(ctx, ds); err != nil {
		return fmt.Errorf("update DataSource %s/%s: %w", t.ns, t.o.DataSource, err)
	}
	return nil
}

// proxyClient finds the upload proxy's URL and builds an HTTPS client
// trusting its CA.
func (t *DataVolumeTarget) proxyClient(ctx context.Context) (*http.Client, string, error) {
	raw := t.o.UploadProxyURL
	cfg := &cdiv1.CDIConfig{}
	cfgErr := t.kc.Get(ctx, client.ObjectKey{Name: "config"}, cfg)
	if raw == "" {
		if cfgErr != nil {
			return nil, "", fmt.Errorf("no upload proxy URL: read CDIConfig config: %w (pass --uploadproxy-url)", cfgErr)
		}
		switch {
		case cfg.Spec.UploadProxyURLOverride != nil && *cfg.Spec.UploadProxyURLOverride != "":
			raw = *cfg.Spec.UploadProxyURLOverride
		case cfg.Status.UploadProxyURL != nil && *cfg.Status.UploadProxyURL != "":
			raw = *cfg.Status.UploadProxyURL
		default:
			return nil, "", errors.New("no upload proxy URL: CDIConfig config publishes none (pass --uploadproxy-url)")
		}
	}
	base, err := proxyURL(raw)
	if err != nil {
		return nil, "", err
	}
	if t.hc != nil {
		return t.hc, base, nil
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	switch {
	case t.o.Insecure:
		tlsCfg.InsecureSkipVerify = true
	case t.o.CAFile != "":
		pem, err := os.ReadFile(t.o.CAFile)
		if err != nil {
			return nil, "", fmt.Errorf("ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, "", fmt.Errorf("ca-file %s: no PEM certificate", t.o.CAFile)
		}
		tlsCfg.RootCAs = pool
	default:
		if pem := t.proxyCA(ctx, cfg); pem != "" {
			pool, err := x509.SystemCertPool()
			if err != nil {
				pool = x509.NewCertPool()
			}
			if pool.AppendCertsFromPEM([]byte(pem)) {
				tlsCfg.RootCAs = pool
			}
		}
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsCfg,
		TLSHandshakeTimeout:   30 * time.Second,
		ResponseHeaderTimeout: 0, // a sync upload answers after the last byte is written
		// CDI's proxy answers 503/401 before reading the body: with
		// 100-continue the image is not converted for nothing. The
		// proxy itself waits up to 10 s for the upload pod.
		ExpectContinueTimeout: 15 * time.Second,
		WriteBufferSize:       256 << 10,
		ReadBufferSize:        64 << 10,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       90 * time.Second,
	}
	return &http.Client{Transport: tr}, base, nil
}

// proxyCA reads the upload proxy's CA: the signer-bundle ConfigMap CDI
// publishes, else CDIConfig's status.uploadProxyCA. Unreadable is not an
// error: system roots may do (a public certificate on an ingress).
func (t *DataVolumeTarget) proxyCA(ctx context.Context, cfg *cdiv1.CDIConfig) string {
	for _, ns := range t.o.CDINamespaces {
		cm := &corev1.ConfigMap{}
		if err := t.kc.Get(ctx, client.ObjectKey{Namespace: ns, Name: "cdi-uploadproxy-signer-bundle"}, cm); err == nil {
			if b := cm.Data["ca-bundle.crt"]; b != "" {
				return b
			}
		}
	}
	if cfg.Status.UploadProxyCA != nil {
		return *cfg.Status.UploadProxyCA
	}
	return ""
}

// proxyURL normalizes CDIConfig's bare host[:port] to https://host[:port].
func proxyURL(raw string) (string, error) {
	s := strings.TrimRight(strings.TrimSpace(raw), "/")
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	if !strings.HasPrefix(s, "https://") && !strings.HasPrefix(s, "http://") {
		return "", fmt.Errorf("upload proxy URL %q: not http(s)", raw)
	}
	host := strings.SplitN(strings.SplitN(s, "://", 2)[1], "/", 2)[0]
	if host == "" {
		return "", fmt.Errorf("upload proxy URL %q: no host", raw)
	}
	return s, nil
}

func sourceHost(u string) string {
	_, rest, ok := strings.Cut(u, "://")
	if !ok {
		if u == "" {
			return ""
		}
		return "local"
	}
	host := strings.SplitN(rest, "/", 2)[0]
	if i := strings.LastIndex(host, "@"); i >= 0 {
		host = host[i+1:]
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if dns1123(host) != "" || len(host) > 63 {
		return ""
	}
	return host
}

// redactURL drops userinfo and query (presigned URLs carry credentials).
func redactURL(u string) string {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return u
	}
	hostPath := rest
	if i := strings.IndexAny(hostPath, "?#"); i >= 0 {
		hostPath = hostPath[:i]
	}
	if slash := strings.Index(hostPath, "/"); slash >= 0 {
		if at := strings.LastIndex(hostPath[:slash], "@"); at >= 0 {
			hostPath = hostPath[at+1:]
		}
	} else if at := strings.LastIndex(hostPath, "@"); at >= 0 {
		hostPath = hostPath[at+1:]
	}
	return scheme + "://" + hostPath
}
