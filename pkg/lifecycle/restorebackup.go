package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubevirtv1 "kubevirt.io/api/core/v1"
)

// DiskTarget is a DataVolume to create and fill from a backup's disk.
type DiskTarget struct {
	Namespace, Name string
	Size            string
	StorageClass    string
	VolumeMode      string
	AccessModes     []string
}

// DiskImporter fills a new DataVolume from src (s3://…/VOLUME.raw) and
// checks its SHA-256 (checksum "sha256:HEX") on the way: in ferry, the
// import pipeline of `ferry import SRC dv://NS/NAME`.
type DiskImporter func(ctx context.Context, src, checksum string, dst DiskTarget) error

// RestoreBackupOptions configure RestoreBackup.
type RestoreBackupOptions struct {
	// Backup is s3://…/VM/STAMP (or its manifest.json), or s3://…/VM for
	// the newest complete backup.
	Backup string
	S3     S3Options
	// Namespace and Name of the new VM (default: the client's namespace,
	// the backed-up VM's name).
	Namespace, Name string
	// RunStrategy of the new VM (default: as backed up).
	RunStrategy string
	// Import fills each disk.
	Import DiskImporter
	// DryRun reads the manifest and returns the plan only.
	DryRun bool
}

// Validate checks the options.
func (o *RestoreBackupOptions) Validate() error {
	if _, err := ParseS3(o.Backup); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if o.Name != "" {
		if err := checkName("vm", o.Name); err != nil {
			return err
		}
	}
	if o.Import == nil && !o.DryRun {
		return errors.New("restore-backup: no disk importer")
	}
	return nil
}

// RestoreBackupResult reports a restore from backup.
type RestoreBackupResult struct {
	Backup    string            `json:"backup"`
	Namespace string            `json:"namespace"`
	VM        string            `json:"vm"`
	Disks     map[string]string `json:"disks"` // volume → new DataVolume
	Manifest  *Manifest         `json:"manifest"`
	// Plan is the VM that was (or, with DryRun, would be) created.
	Plan *kubevirtv1.VirtualMachine `json:"plan,omitempty"`
}

// ReadManifest finds and reads a backup's manifest: loc is the backup
// directory, its manifest.json, or the VM's directory (the newest
// complete backup then).
func ReadManifest(ctx context.Context, s3o S3Options, loc string) (*Manifest, S3Location, error) {
	l, err := ParseS3(loc)
	if err != nil {
		return nil, S3Location{}, err
	}
	store, err := newObjectStore(s3o)
	if err != nil {
		return nil, S3Location{}, err
	}
	dir := l
	if strings.HasSuffix(l.Prefix, "/"+ManifestName) || l.Prefix == ManifestName {
		dir.Prefix = strings.TrimSuffix(strings.TrimSuffix(l.Prefix, ManifestName), "/")
	}
	b, err := store.get(ctx, dir.Bucket, dir.Join(ManifestName).Prefix, maxManifest)
	if err != nil {
		// Not a backup directory: maybe the VM's, holding several.
		dirs, lerr := listBackups(ctx, store, dir)
		if lerr != nil {
			return nil, dir, fmt.Errorf("read %s: %w", dir.Join(ManifestName), err)
		}
		found := false
		for _, d := range dirs {
			if d.complete {
				dir, found = dir.Join(d.stamp), true
				break
			}
		}
		if !found {
			return nil, dir, fmt.Errorf("%w: no complete backup (with %s) at %s", ErrNotFound, ManifestName, l)
		}
		if b, err = store.get(ctx, dir.Bucket, dir.Join(ManifestName).Prefix, maxManifest); err != nil {
			return nil, dir, fmt.Errorf("read %s: %w", dir.Join(ManifestName), err)
		}
	}
	m := &Manifest{}
	if err := json.Unmarshal(b, m); err != nil {
		return nil, dir, fmt.Errorf("read %s: %w", dir.Join(ManifestName), err)
	}
	if m.APIVersion != ManifestAPI || m.Kind != ManifestKind || m.VirtualMachine == nil {
		return nil, dir, fmt.Errorf("%s: not a ferry backup manifest (%s %s)", dir.Join(ManifestName), m.APIVersion, m.Kind)
	}
	return m, dir, nil
}

// RestoreBackup recreates a VM from a backup: each disk is imported into
// a new DataVolume NAME-VOLUME (its SHA-256 checked against the
// manifest), then the VM is created from the recorded spec with its
// volumes pointing at them.
func (c *Client) RestoreBackup(ctx context.Context, o RestoreBackupOptions) (*RestoreBackupResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	m, dir, err := ReadManifest(ctx, o.S3, o.Backup)
	if err != nil {
		return nil, fmt.Errorf("restore backup %s: %w", o.Backup, err)
	}
	ns := c.ns(o.Namespace)
	name := o.Name
	if name == "" {
		name = m.VM
	}
	fail := func(stage string, err error) error {
		return fmt.Errorf("restore backup %s to vm %s/%s: %s: %w", dir, ns, name, stage, err)
	}
	if err := checkName("vm", name); err != nil {
		return nil, fail("check", err)
	}
	res := &RestoreBackupResult{Backup: dir.String(), Namespace: ns, VM: name, Disks: map[string]string{}, Manifest: m}
	vm := &kubevirtv1.VirtualMachine{
		TypeMeta:   metav1.TypeMeta{APIVersion: kubevirtv1.SchemeGroupVersion.String(), Kind: "VirtualMachine"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: m.VirtualMachine.Labels, Annotations: m.VirtualMachine.Annotations},
		Spec:       *m.VirtualMachine.Spec.DeepCopy(),
	}
	if vm.Labels == nil {
		vm.Labels = map[string]string{}
	}
	vm.Labels[LabelManagedBy] = ManagedBy
	// Disks come back as plain DataVolumes: no templates (they would clone
	// again from the golden image).
	vm.Spec.DataVolumeTemplates = nil
	if vm.Spec.Template == nil {
		return nil, fail("check", errors.New("the recorded VM has no template"))
	}
	if o.RunStrategy != "" {
		vm.Spec.RunStrategy = ptr(kubevirtv1.VirtualMachineRunStrategy(o.RunStrategy))
		vm.Spec.Running = nil
	}
	if name != m.VM || ns != m.Namespace {
		// A copy beside the original must not share its identity.
		if vm.Spec.Template.ObjectMeta.Labels != nil {
			vm.Spec.Template.ObjectMeta.Labels["kubevirt.io/vm"] = name
		}
		if fw := vm.Spec.Template.Spec.Domain.Firmware; fw != nil {
			fw.UUID, fw.Serial = "", ""
		}
		for i := range vm.Spec.Template.Spec.Domain.Devices.Interfaces {
			vm.Spec.Template.Spec.Domain.Devices.Interfaces[i].MacAddress = ""
		}
	}
	targets := map[string]DiskTarget{}
	for _, d := range m.Disks {
		t := DiskTarget{Namespace: ns, Name: name + "-" + d.Volume, Size: d.Size, StorageClass: d.StorageClass, VolumeMode: d.VolumeMode, AccessModes: d.AccessModes}
		if t.Size == "" {
			t.Size = fmt.Sprint(d.Bytes)
		}
		targets[d.Volume] = t
		res.Disks[d.Volume] = t.Name
	}
	for i, v := range vm.Spec.Template.Spec.Volumes {
		if t, ok := targets[v.Name]; ok {
			vm.Spec.Template.Spec.Volumes[i].VolumeSource = kubevirtv1.VolumeSource{DataVolume: &kubevirtv1.DataVolumeSource{Name: t.Name}}
		} else if v.DataVolume != nil || v.PersistentVolumeClaim != nil {
			return nil, fail("check", fmt.Errorf("volume %s has a claim but no disk in the backup", v.Name))
		}
	}
	res.Plan = vm
	if o.DryRun {
		return res, nil
	}
	// Refuse before importing gigabytes into a name that is taken.
	if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &kubevirtv1.VirtualMachine{}); err == nil {
		return nil, fail("check", fmt.Errorf("vm %s/%s already exists: pass --name", ns, name))
	} else if !apierrors.IsNotFound(err) {
		return nil, fail("check", err)
	}
	for _, d := range m.Disks {
		t := targets[d.Volume]
		src := dir.Join(d.Object).String()
		if err := o.Import(ctx, src, "sha256:"+d.SHA256, t); err != nil {
			return res, fail(fmt.Sprintf("import %s into dv://%s/%s", src, ns, t.Name), err)
		}
	}
	if err := c.Kube.Create(ctx, vm); err != nil {
		return res, fail("create VirtualMachine", err)
	}
	return res, nil
}

// PVCAccessModes converts the recorded access modes.
func (t DiskTarget) PVCAccessModes() []corev1.PersistentVolumeAccessMode {
	var out []corev1.PersistentVolumeAccessMode
	for _, m := range t.AccessModes {
		out = append(out, corev1.PersistentVolumeAccessMode(m))
	}
	return out
}
