package lifecycle

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubevirtv1 "kubevirt.io/api/core/v1"
	exportv1 "kubevirt.io/api/export/v1beta1"
	snapshotv1 "kubevirt.io/api/snapshot/v1beta1"

	"github.com/hikube/ferry/importer"
	"github.com/hikube/ferry/pkg/progress"
)

// Backup layout: s3://BUCKET/PREFIX/VM/STAMP/{VOLUME.raw,SHA256SUMS,manifest.json}.
// manifest.json is written last: a directory without it is not a backup.
const (
	ManifestName   = "manifest.json"
	SumsName       = "SHA256SUMS"
	ManifestKind   = "VMBackup"
	ManifestAPI    = "ferry.hikube.io/v1"
	stampLayout    = "20060102T150405Z"
	maxManifest    = 16 << 20
	backupLabelKey = "ferry.hikube.io/backup"
)

// BackupOptions configure Backup.
type BackupOptions struct {
	Namespace, VM string
	// To is where backups go: s3://BUCKET/PREFIX; this one lands in
	// PREFIX/VM/STAMP/.
	To string
	S3 S3Options
	// Keep prunes, after a successful backup, all but the newest Keep
	// complete backups of the VM (0: no pruning).
	Keep int
	// Link is the export format fetched: raw (default; ranged requests,
	// resumed on error) or gzip (less traffic; restarted on error). The
	// object stored is RAW either way.
	Link exportv1.ExportVolumeFormat
	// Attempts per volume (default 2; the raw link also resumes within an
	// attempt, up to Retries times per request: 0 is the importer's
	// default, negative none).
	Attempts, Retries int
	// Timeout bounds each wait (snapshot, export readiness); 0: 10 min.
	Timeout time.Duration
	// Progress counts bytes stored.
	Progress *progress.Counter
	// Version is recorded in the manifest.
	Version string
}

// Validate checks the options and fills in defaults.
func (o *BackupOptions) Validate() error {
	if err := checkName("vm", o.VM); err != nil {
		return err
	}
	if _, err := ParseS3(o.To); err != nil {
		return fmt.Errorf("--to: %w", err)
	}
	if o.Keep < 0 {
		return errors.New("--keep: must not be negative")
	}
	switch o.Link {
	case "":
		o.Link = exportv1.KubeVirtRaw
	case exportv1.KubeVirtRaw, exportv1.KubeVirtGz:
	default:
		return fmt.Errorf("--link %q: want raw or gzip", o.Link)
	}
	if o.Attempts <= 0 {
		o.Attempts = 2
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Minute
	}
	return nil
}

// Manifest describes one backup.
type Manifest struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Namespace  string    `json:"namespace"`
	VM         string    `json:"vm"`
	Started    time.Time `json:"started"`
	Completed  time.Time `json:"completed"`
	Ferry      string    `json:"ferryVersion,omitempty"`
	// Source is what was exported: VirtualMachine (stopped) or
	// VirtualMachineSnapshot (running: an online snapshot first).
	Source      string   `json:"source"`
	Snapshot    string   `json:"snapshot,omitempty"`
	Indications []string `json:"indications,omitempty"`
	// VirtualMachine is the VM as it was (metadata trimmed, no status).
	VirtualMachine *kubevirtv1.VirtualMachine `json:"virtualMachine"`
	Disks          []BackupDisk               `json:"disks"`
}

// BackupDisk is one disk in a backup.
type BackupDisk struct {
	Volume string `json:"volume"`
	Claim  string `json:"claim"`
	Kind   string `json:"kind"`
	CDROM  bool   `json:"cdrom,omitempty"`
	// Object is the RAW image's key, relative to the backup directory.
	Object string `json:"object"`
	SHA256 string `json:"sha256"`
	Bytes  int64  `json:"bytes"`
	// Storage of the original claim, to recreate it alike.
	Size         string   `json:"size,omitempty"`
	StorageClass string   `json:"storageClass,omitempty"`
	VolumeMode   string   `json:"volumeMode,omitempty"`
	AccessModes  []string `json:"accessModes,omitempty"`
}

// BackupResult reports a backup.
type BackupResult struct {
	Location string    `json:"location"`
	Manifest *Manifest `json:"manifest"`
	// Pruned lists backup directories removed by Keep.
	Pruned   []string `json:"pruned,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

// Backup exports a VM's disks with a VirtualMachineExport and streams
// each to S3 as RAW, hashing it on the way, then writes SHA256SUMS and
// the manifest. A running VM is snapshotted first (KubeVirt exports
// volumes that no running VM holds) and the export reads the snapshot.
// On failure, what this backup wrote is removed: no manifest claims a
// backup that is not whole.
func (c *Client) Backup(ctx context.Context, o BackupOptions) (*BackupResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	ns := c.ns(o.Namespace)
	fail := func(stage string, err error) error {
		return fmt.Errorf("backup vm %s/%s: %s: %w", ns, o.VM, stage, err)
	}
	to, _ := ParseS3(o.To)
	store, err := newObjectStore(o.S3)
	if err != nil {
		return nil, fail("s3", err)
	}
	started := c.now().UTC()
	vm, _, err := c.resolveVM(ctx, ns, o.VM)
	if err != nil {
		return nil, fail("get VirtualMachine", err)
	}
	disks, err := c.disks(ctx, ns, vm)
	if err != nil {
		return nil, fail("list disks", err)
	}
	m := &Manifest{APIVersion: ManifestAPI, Kind: ManifestKind, Namespace: ns, VM: vm.Name, Started: started, Ferry: o.Version, VirtualMachine: trimVM(vm)}
	for _, d := range disks {
		if d.Claim == "" {
			continue
		}
		m.Disks = append(m.Disks, BackupDisk{Volume: d.Volume, Claim: d.Claim, Kind: d.Kind, CDROM: d.CDROM, Object: d.Volume + ".raw",
			Size: d.Size, StorageClass: d.StorageClass, VolumeMode: d.VolumeMode, AccessModes: d.AccessModes})
	}
	if len(m.Disks) == 0 {
		return nil, fail("list disks", errors.New("the VM has no DataVolume or PersistentVolumeClaim disk to back up"))
	}
	stamp := started.Format(stampLayout)
	dir := to.Join(vm.Name, stamp)
	res := &BackupResult{Location: dir.String(), Manifest: m}
	labels := managedLabels(vm.Name)
	labels[backupLabelKey] = stamp
	objName := exportName("ferry-" + vm.Name + "-" + strings.ToLower(stamp))

	// Export source: the VM itself when stopped, else an online snapshot.
	source := corev1.TypedLocalObjectReference{APIGroup: ptr(kubevirtv1.SchemeGroupVersion.Group), Kind: "VirtualMachine", Name: vm.Name}
	m.Source = "VirtualMachine"
	running, err := c.running(ctx, ns, vm.Name)
	if err != nil {
		return nil, fail("get VirtualMachineInstance", err)
	}
	var cleanups []func() error
	cleanup := func() error {
		var errs []error
		for _, f := range slices.Backward(cleanups) {
			errs = append(errs, f())
		}
		return errors.Join(errs...)
	}
	if running {
		snap, err := c.Snapshot(ctx, SnapshotOptions{Namespace: ns, VM: vm.Name, Name: objName, Wait: true, Timeout: o.Timeout, Labels: map[string]string{backupLabelKey: stamp}})
		if snap != nil && snap.Name != "" {
			cleanups = append(cleanups, func() error { return c.deleteSnapshot(ctx, ns, objName) })
		}
		if err != nil {
			return nil, errors.Join(fail("snapshot", err), cleanup())
		}
		m.Source, m.Snapshot, m.Indications = "VirtualMachineSnapshot", snap.Name, snap.Indications
		res.Warnings = append(res.Warnings, snap.Notes...)
		source = corev1.TypedLocalObjectReference{APIGroup: ptr(snapshotv1.SchemeGroupVersion.Group), Kind: "VirtualMachineSnapshot", Name: snap.Name}
	}
	sess, err := c.startExport(ctx, ns, objName, source, labels, o.Timeout)
	if err != nil {
		return nil, errors.Join(fail("export", err), cleanup())
	}
	cleanups = append(cleanups, func() error { return c.deleteExport(ctx, ns, objName) })

	var written []string
	discard := func() {
		// Best effort, detached from a cancelled ctx.
		_ = store.remove(context.WithoutCancel(ctx), dir.Bucket, written)
	}
	hc, err := c.exportHTTPClient(sess)
	if err != nil {
		return nil, errors.Join(fail("export", err), cleanup())
	}
	for i := range m.Disks {
		d := &m.Disks[i]
		key := dir.Join(d.Object).Prefix
		var lastErr error
		for attempt := 1; attempt <= o.Attempts; attempt++ {
			if ctx.Err() != nil {
				break
			}
			d.SHA256, d.Bytes, lastErr = c.copyVolume(ctx, sess, hc, d.Claim, o, store, dir.Bucket, key)
			if lastErr == nil {
				break
			}
		}
		if lastErr == nil && ctx.Err() != nil {
			lastErr = ctx.Err()
		}
		if lastErr != nil {
			written = append(written, key)
			discard()
			return nil, errors.Join(fail(fmt.Sprintf("copy volume %s (claim %s) to %s", d.Volume, d.Claim, S3Location{dir.Bucket, key}), lastErr), cleanup())
		}
		written = append(written, key)
	}
	var sums strings.Builder
	for _, d := range m.Disks {
		fmt.Fprintf(&sums, "%s  %s\n", d.SHA256, d.Object)
	}
	sumsKey := dir.Join(SumsName).Prefix
	if err := store.put(ctx, dir.Bucket, sumsKey, strings.NewReader(sums.String()), int64(sums.Len()), "text/plain"); err != nil {
		written = append(written, sumsKey)
		discard()
		return nil, errors.Join(fail("write "+SumsName, err), cleanup())
	}
	written = append(written, sumsKey)
	m.Completed = c.now().UTC()
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		discard()
		return nil, errors.Join(fail("manifest", err), cleanup())
	}
	if err := store.put(ctx, dir.Bucket, dir.Join(ManifestName).Prefix, strings.NewReader(string(mb)), int64(len(mb)), "application/json"); err != nil {
		written = append(written, dir.Join(ManifestName).Prefix)
		discard()
		return nil, errors.Join(fail("write "+ManifestName, err), cleanup())
	}
	if err := cleanup(); err != nil {
		return res, fail("backup complete at "+dir.String()+", but cleanup failed", err)
	}
	if o.Keep > 0 {
		pruned, err := pruneBackups(ctx, store, to.Join(vm.Name), o.Keep)
		res.Pruned = pruned
		if err != nil {
			return res, fail("backup complete at "+dir.String()+", but pruning failed", err)
		}
	}
	return res, nil
}

func (c *Client) running(ctx context.Context, ns, name string) (bool, error) {
	vmi := &kubevirtv1.VirtualMachineInstance{}
	if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, vmi); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, err
	}
	return !vmi.IsFinal(), nil
}

func (c *Client) deleteSnapshot(ctx context.Context, ns, name string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	s := &snapshotv1.VirtualMachineSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := c.Kube.Delete(ctx, s); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete VirtualMachineSnapshot %s: %w", name, err)
	}
	return nil
}

// trimVM keeps what recreating the VM needs.
func trimVM(vm *kubevirtv1.VirtualMachine) *kubevirtv1.VirtualMachine {
	out := &kubevirtv1.VirtualMachine{
		TypeMeta:   metav1.TypeMeta{APIVersion: kubevirtv1.SchemeGroupVersion.String(), Kind: "VirtualMachine"},
		ObjectMeta: metav1.ObjectMeta{Name: vm.Name, Namespace: vm.Namespace, Labels: vm.Labels},
		Spec:       *vm.Spec.DeepCopy(),
	}
	if len(vm.Annotations) > 0 {
		out.Annotations = map[string]string{}
		for k, v := range vm.Annotations {
			if k != "kubectl.kubernetes.io/last-applied-configuration" {
				out.Annotations[k] = v
			}
		}
	}
	return out
}

// copyVolume streams one exported volume to S3 as RAW and returns its
// SHA-256 and length.
func (c *Client) copyVolume(ctx context.Context, s *exportSession, hc *http.Client, volume string, o BackupOptions, store *objectStore, bucket, key string) (string, int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if o.Link == exportv1.KubeVirtRaw {
		if u, _, err := s.url(volume, exportv1.KubeVirtRaw); err == nil {
			// The importer's fetcher: parallel ranged requests, resumed at
			// the exact byte after an error, hashed in order.
			st, err := importer.OpenStream(ctx, u, importer.Options{
				Headers:    http.Header{ExportTokenHeader: []string{s.token}},
				HTTPClient: hc,
				Retries:    o.Retries,
			})
			if err != nil {
				return "", 0, fmt.Errorf("open %s: %w", redact(u), err)
			}
			defer st.Close()
			cr := &countingReader{r: st, p: o.Progress}
			if err := store.put(ctx, bucket, key, cr, st.Size(), "application/octet-stream"); err != nil {
				return "", 0, err
			}
			d, err := st.Complete(ctx)
			if err != nil {
				return "", 0, err
			}
			if st.Size() >= 0 && cr.n != st.Size() {
				return "", 0, fmt.Errorf("stored %d of %d bytes", cr.n, st.Size())
			}
			return d.SHA256, cr.n, nil
		}
	}
	u, _, err := s.url(volume, exportv1.KubeVirtGz, exportv1.KubeVirtRaw)
	if err != nil {
		return "", 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", 0, err
	}
	req.Header.Set(ExportTokenHeader, s.token)
	resp, err := hc.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("GET %s: %w", redact(u), unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("GET %s: %s", redact(u), resp.Status)
	}
	var r io.Reader = resp.Body
	if strings.HasSuffix(u, ".gz") {
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			return "", 0, fmt.Errorf("GET %s: gzip: %w", redact(u), err)
		}
		r = zr
	}
	h := sha256.New()
	cr := &countingReader{r: io.TeeReader(r, h), p: o.Progress}
	if err := store.put(ctx, bucket, key, cr, -1, "application/octet-stream"); err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), cr.n, nil
}

type countingReader struct {
	r io.Reader
	n int64
	p *progress.Counter
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.p != nil {
		c.p.Add(int64(n))
	}
	return n, err
}

// redact drops the query (a token may ride there).
func redact(u string) string {
	if i := strings.IndexByte(u, '?'); i >= 0 {
		return u[:i]
	}
	return u
}

func unwrapURLError(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}

// backupDir is one backup directory under PREFIX/VM/.
type backupDir struct {
	stamp    string
	keys     []string
	complete bool
}

// listBackups groups the keys under vmDir by backup, newest first.
func listBackups(ctx context.Context, store *objectStore, vmDir S3Location) ([]*backupDir, error) {
	prefix := vmDir.Prefix + "/"
	keys, err := store.list(ctx, vmDir.Bucket, prefix)
	if err != nil {
		return nil, err
	}
	by := map[string]*backupDir{}
	for _, k := range keys {
		rest := strings.TrimPrefix(k, prefix)
		stamp, file, ok := strings.Cut(rest, "/")
		if !ok {
			continue
		}
		if _, err := time.Parse(stampLayout, stamp); err != nil {
			continue // not ours
		}
		b := by[stamp]
		if b == nil {
			b = &backupDir{stamp: stamp}
			by[stamp] = b
		}
		b.keys = append(b.keys, k)
		if file == ManifestName {
			b.complete = true
		}
	}
	var out []*backupDir
	for _, b := range by {
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b *backupDir) int { return strings.Compare(b.stamp, a.stamp) })
	return out, nil
}

// pruneBackups keeps the newest keep complete backups and removes every
// directory older than the oldest kept one (complete or not). Newer
// incomplete directories may be backups in progress: they stay.
func pruneBackups(ctx context.Context, store *objectStore, vmDir S3Location, keep int) ([]string, error) {
	dirs, err := listBackups(ctx, store, vmDir)
	if err != nil {
		return nil, err
	}
	complete := 0
	cut := -1
	for i, d := range dirs {
		if d.complete {
			complete++
			if complete == keep {
				cut = i
				break
			}
		}
	}
	if cut < 0 {
		return nil, nil
	}
	var pruned []string
	var errs []error
	for _, d := range dirs[cut+1:] {
		// The manifest first: a half-removed backup must not look whole.
		slices.SortFunc(d.keys, func(a, b string) int {
			am, bm := path.Base(a) == ManifestName, path.Base(b) == ManifestName
			switch {
			case am && !bm:
				return -1
			case bm && !am:
				return 1
			}
			return strings.Compare(a, b)
		})
		if err := store.remove(ctx, vmDir.Bucket, d.keys); err != nil {
			errs = append(errs, err)
			continue
		}
		pruned = append(pruned, vmDir.Join(d.stamp).String())
	}
	return pruned, errors.Join(errs...)
}
