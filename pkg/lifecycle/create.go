package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	kubevirtv1 "kubevirt.io/api/core/v1"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Flavor selects which objects describe the VM.
type Flavor string

const (
	// FlavorKubeVirt writes a kubevirt.io/v1 VirtualMachine (with
	// dataVolumeTemplates for cloned and blank disks).
	FlavorKubeVirt Flavor = "kubevirt"
	// FlavorCozystack writes Cozystack/Hikube apps: a VMInstance and its
	// VMDisks (apps.cozystack.io/v1alpha1); Cozystack renders the
	// VirtualMachine (vm-instance-NAME) and DataVolumes (vm-disk-NAME).
	FlavorCozystack Flavor = "cozystack"
)

// Defaults of CreateOptions.
const (
	DefaultStorageClass = "replicated" // Hikube: copied across three datacenters
	DefaultCPU          = 2            // Hikube's advice: at least 2 vCPU
	DefaultMemory       = "4Gi"
	// DefaultCozystackInstanceType is the smallest u1 type with 2 vCPU.
	DefaultCozystackInstanceType = "u1.large"
	// DefaultCozystackImageSize sizes a VMDisk cloned from a golden image
	// when --size is not given (VMDisk needs a size; a DataVolume clone
	// does not).
	DefaultCozystackImageSize = "20Gi"
	// cloudInitInlineMax is virt-api's limit on inline user data; larger
	// user data goes into a Secret.
	cloudInitInlineMax = 2048
)

// CreateOptions describe a VM to create.
type CreateOptions struct {
	Name      string
	Namespace string // default: the client's
	Flavor    Flavor // default kubevirt

	// Boot source: exactly one of Disk (boot an existing disk as is) or
	// Image (clone a golden image), or neither when a CD-ROM boots.
	Disk *DiskRef
	// Image is a CDI DataSource, [NAMESPACE/]NAME (kubevirt flavor), or a
	// Cozystack golden image name (cozystack flavor).
	Image string
	// Size of the disk cloned from Image (kubevirt: optional, CDI takes the
	// source's size; cozystack: default 20Gi).
	Size string
	// StorageClass of new disks (default replicated).
	StorageClass string
	// DataDisks are sizes of blank data disks.
	DataDisks []string
	// CDROMs are ISO disks attached as CD-ROMs.
	CDROMs []DiskRef

	// Sizing: InstanceType/Preference (cluster-wide kinds), or CPU/Memory
	// (default 2 vCPU, 4Gi when none is given).
	InstanceType string
	Preference   string
	CPU          uint32
	Memory       string

	// SSHKeys are public keys (file contents); CloudInit is user data.
	// Both go to the guest through a NoCloud volume.
	SSHKeys   []string
	CloudInit string
	// RunStrategy (default Always).
	RunStrategy string
	// Firmware is "bios" (default) or "efi".
	Firmware string
}

// Validate checks the options before anything is built and fills in
// defaults.
func (o *CreateOptions) Validate() error {
	if err := checkName("vm", o.Name); err != nil {
		return err
	}
	if o.Flavor == "" {
		o.Flavor = FlavorKubeVirt
	}
	if o.Flavor != FlavorKubeVirt && o.Flavor != FlavorCozystack {
		return fmt.Errorf("flavor %q: want kubevirt or cozystack", o.Flavor)
	}
	if o.Disk != nil && o.Image != "" {
		return errors.New("--disk and --image are exclusive: boot an existing disk or clone a golden image")
	}
	if o.Disk == nil && o.Image == "" && len(o.CDROMs) == 0 {
		return errors.New("nothing to boot: give --disk, --image or --cdrom")
	}
	if o.StorageClass == "" {
		o.StorageClass = DefaultStorageClass
	}
	if o.Size != "" {
		q, err := resource.ParseQuantity(o.Size)
		if err != nil || q.Sign() <= 0 {
			return fmt.Errorf("--size %q: want a positive quantity such as 20Gi", o.Size)
		}
		if o.Image == "" {
			return errors.New("--size applies to a disk cloned with --image")
		}
	}
	for _, s := range o.DataDisks {
		q, err := resource.ParseQuantity(s)
		if err != nil || q.Sign() <= 0 {
			return fmt.Errorf("--data-disk %q: want a positive quantity such as 50Gi", s)
		}
	}
	if o.Image != "" {
		ns, name, ok := strings.Cut(o.Image, "/")
		if !ok {
			ns, name = "", o.Image
		}
		if err := checkName("image", name); err != nil {
			return err
		}
		if ns != "" && o.Flavor == FlavorCozystack {
			return fmt.Errorf("image %q: Cozystack golden images are named without a namespace", o.Image)
		}
	}
	disks := slices.Clone(o.CDROMs)
	if o.Disk != nil {
		disks = append(disks, *o.Disk)
	}
	for _, d := range disks {
		switch {
		case o.Flavor == FlavorCozystack && d.Kind != "vmdisk":
			return fmt.Errorf("disk %s: the cozystack flavor uses VMDisks (vmdisk://NAME; ferry import … vmdisk://NAME)", d)
		case o.Flavor == FlavorKubeVirt && d.Kind == "vmdisk":
			return fmt.Errorf("disk %s: a VMDisk needs --flavor cozystack (or use its DataVolume dv://vm-disk-%s)", d, d.Name)
		}
		// A VM's volumes live in its own namespace.
		if d.Namespace != "" && o.Namespace != "" && d.Namespace != o.Namespace {
			return fmt.Errorf("disk %s is in namespace %s, the VM in %s: a VM can only use disks of its own namespace", d, d.Namespace, o.Namespace)
		}
		if d.Namespace != "" && o.Namespace == "" {
			o.Namespace = d.Namespace
		}
	}
	if o.InstanceType != "" && (o.CPU != 0 || o.Memory != "") {
		return errors.New("--instancetype and --cpu/--memory are exclusive: the instance type sets both")
	}
	if o.Memory != "" {
		q, err := resource.ParseQuantity(o.Memory)
		if err != nil || q.Sign() <= 0 {
			return fmt.Errorf("--memory %q: want a positive quantity such as 4Gi", o.Memory)
		}
	}
	if o.InstanceType == "" {
		if o.Flavor == FlavorCozystack && o.CPU == 0 && o.Memory == "" {
			o.InstanceType = DefaultCozystackInstanceType
		} else {
			if o.CPU == 0 {
				o.CPU = DefaultCPU
			}
			if o.Memory == "" {
				o.Memory = DefaultMemory
			}
		}
	}
	if o.RunStrategy == "" {
		o.RunStrategy = string(kubevirtv1.RunStrategyAlways)
	}
	switch kubevirtv1.VirtualMachineRunStrategy(o.RunStrategy) {
	case kubevirtv1.RunStrategyAlways, kubevirtv1.RunStrategyHalted, kubevirtv1.RunStrategyManual,
		kubevirtv1.RunStrategyRerunOnFailure, kubevirtv1.RunStrategyOnce:
	default:
		return fmt.Errorf("--run-strategy %q: want Always, Halted, Manual, RerunOnFailure or Once", o.RunStrategy)
	}
	switch o.Firmware {
	case "":
		o.Firmware = "bios"
	case "bios", "efi":
		if o.Flavor == FlavorCozystack && o.Firmware == "efi" {
			return errors.New("--firmware efi: the cozystack flavor takes the firmware from the instance profile (--preference)")
		}
	default:
		return fmt.Errorf("--firmware %q: want bios or efi", o.Firmware)
	}
	for i, k := range o.SSHKeys {
		k = strings.TrimSpace(k)
		if k == "" || strings.ContainsAny(k, "\n") || !strings.HasPrefix(k, "ssh-") && !strings.HasPrefix(k, "ecdsa-") && !strings.HasPrefix(k, "sk-") {
			return fmt.Errorf("ssh key %d: want one public key line (ssh-ed25519 AAAA…)", i+1)
		}
		o.SSHKeys[i] = k
	}
	if o.CloudInit != "" && len(o.SSHKeys) > 0 && !isCloudConfig(o.CloudInit) {
		return errors.New("--ssh-key with a --cloud-init that is not #cloud-config: put the keys in your user data")
	}
	return nil
}

// Warnings are advice about valid options (Hikube's recommendations).
func (o *CreateOptions) Warnings() []string {
	var w []string
	// The common-instancetypes u1 sizes below large have one vCPU.
	oneCPU := map[string]bool{"u1.nano": true, "u1.micro": true, "u1.small": true, "u1.medium": true}
	if o.CPU == 1 || oneCPU[o.InstanceType] {
		w = append(w, "1 vCPU: Hikube advises at least 2 vCPU (network performance)")
	}
	if o.StorageClass != DefaultStorageClass && (o.Image != "" || len(o.DataDisks) > 0) {
		w = append(w, fmt.Sprintf("storage class %s: Hikube advises %s for production (replicated across three datacenters)", o.StorageClass, DefaultStorageClass))
	}
	return w
}

// Plan is what Create writes, in order.
type Plan struct {
	Namespace string
	// Objects are created in order (a cloud-init Secret before the VM
	// that mounts it).
	Objects []client.Object
	// VMName is the KubeVirt VirtualMachine the plan leads to.
	VMName string
}

// Build turns validated options into the objects to create. It is pure:
// --dry-run prints its result.
func Build(o CreateOptions, namespace string) (*Plan, error) {
	if o.Namespace == "" {
		o.Namespace = namespace
	}
	if o.Flavor == FlavorCozystack {
		return buildCozystack(o)
	}
	return buildKubeVirt(o)
}

func storageSpec(size, class string) *cdiv1.StorageSpec {
	// Block + ReadWriteMany: the combination KubeVirt live-migrates.
	s := &cdiv1.StorageSpec{
		AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany},
		VolumeMode:       ptr(corev1.PersistentVolumeBlock),
		StorageClassName: ptr(class),
	}
	if size != "" {
		s.Resources.Requests = corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}
	}
	return s
}

func buildKubeVirt(o CreateOptions) (*Plan, error) {
	ns := o.Namespace
	p := &Plan{Namespace: ns, VMName: o.Name}
	spec := kubevirtv1.VirtualMachineInstanceSpec{
		Domain: kubevirtv1.DomainSpec{
			Devices: kubevirtv1.Devices{
				Interfaces: []kubevirtv1.Interface{{
					Name: "default",
					// Masquerade on the pod network migrates; bridge does not.
					InterfaceBindingMethod: kubevirtv1.InterfaceBindingMethod{Masquerade: &kubevirtv1.InterfaceMasquerade{}},
				}},
			},
		},
		Networks: []kubevirtv1.Network{{Name: "default", NetworkSource: kubevirtv1.NetworkSource{Pod: &kubevirtv1.PodNetwork{}}}},
	}
	if o.Firmware == "efi" {
		// Secure boot needs SMM and signed guests: off unless asked for.
		spec.Domain.Firmware = &kubevirtv1.Firmware{Bootloader: &kubevirtv1.Bootloader{EFI: &kubevirtv1.EFI{SecureBoot: ptr(false)}}}
	} else {
		spec.Domain.Firmware = &kubevirtv1.Firmware{Bootloader: &kubevirtv1.Bootloader{BIOS: &kubevirtv1.BIOS{}}}
	}
	if o.InstanceType == "" {
		spec.Domain.CPU = &kubevirtv1.CPU{Cores: o.CPU}
		spec.Domain.Memory = &kubevirtv1.Memory{Guest: ptr(resource.MustParse(o.Memory))}
	}
	var templates []kubevirtv1.DataVolumeTemplateSpec
	boot := uint(1)
	addDisk := func(name string, dev kubevirtv1.DiskDevice, vs kubevirtv1.VolumeSource, bootable bool) {
		d := kubevirtv1.Disk{Name: name, DiskDevice: dev}
		if bootable {
			d.BootOrder = ptr(boot)
			boot++
		}
		spec.Domain.Devices.Disks = append(spec.Domain.Devices.Disks, d)
		spec.Volumes = append(spec.Volumes, kubevirtv1.Volume{Name: name, VolumeSource: vs})
	}
	virtio := kubevirtv1.DiskDevice{Disk: &kubevirtv1.DiskTarget{Bus: kubevirtv1.DiskBusVirtio}}
	volumeOf := func(d DiskRef) kubevirtv1.VolumeSource {
		if d.Kind == "pvc" {
			return kubevirtv1.VolumeSource{PersistentVolumeClaim: &kubevirtv1.PersistentVolumeClaimVolumeSource{
				PersistentVolumeClaimVolumeSource: corev1.PersistentVolumeClaimVolumeSource{ClaimName: d.Name}}}
		}
		return kubevirtv1.VolumeSource{DataVolume: &kubevirtv1.DataVolumeSource{Name: d.Name}}
	}
	cdromsFirst := o.Disk == nil && o.Image == ""
	switch {
	case o.Disk != nil:
		addDisk("rootdisk", virtio, volumeOf(*o.Disk), true)
	case o.Image != "":
		srcNS, src, ok := strings.Cut(o.Image, "/")
		if !ok {
			srcNS, src = "", o.Image
		}
		ref := &cdiv1.DataVolumeSourceRef{Kind: cdiv1.DataVolumeDataSource, Name: src}
		if srcNS != "" {
			ref.Namespace = ptr(srcNS)
		}
		dv := o.Name + "-rootdisk"
		templates = append(templates, kubevirtv1.DataVolumeTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Name: dv, Labels: managedLabels(o.Name)},
			Spec:       cdiv1.DataVolumeSpec{SourceRef: ref, Storage: storageSpec(o.Size, o.StorageClass)},
		})
		addDisk("rootdisk", virtio, kubevirtv1.VolumeSource{DataVolume: &kubevirtv1.DataVolumeSource{Name: dv}}, true)
	}
	addCDROMs := func() {
		for i, c := range o.CDROMs {
			addDisk("cdrom"+strconv.Itoa(i+1), kubevirtv1.DiskDevice{CDRom: &kubevirtv1.CDRomTarget{Bus: kubevirtv1.DiskBusSATA}}, volumeOf(c), true)
		}
	}
	if cdromsFirst {
		addCDROMs()
	}
	for i, size := range o.DataDisks {
		name := "data" + strconv.Itoa(i+1)
		dv := o.Name + "-" + name
		templates = append(templates, kubevirtv1.DataVolumeTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Name: dv, Labels: managedLabels(o.Name)},
			Spec: cdiv1.DataVolumeSpec{
				Source:  &cdiv1.DataVolumeSource{Blank: &cdiv1.DataVolumeBlankImage{}},
				Storage: storageSpec(size, o.StorageClass),
			},
		})
		// An ISO install writes to the first data disk: let it boot next.
		addDisk(name, virtio, kubevirtv1.VolumeSource{DataVolume: &kubevirtv1.DataVolumeSource{Name: dv}}, cdromsFirst && i == 0)
	}
	if !cdromsFirst {
		addCDROMs()
	}
	if ud := userData(o.CloudInit, o.SSHKeys); ud != "" {
		ci := &kubevirtv1.CloudInitNoCloudSource{}
		if len(ud) <= cloudInitInlineMax {
			ci.UserData = ud
		} else {
			secret := &corev1.Secret{
				TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
				ObjectMeta: metav1.ObjectMeta{Name: o.Name + "-cloudinit", Namespace: ns, Labels: managedLabels(o.Name)},
				Type:       corev1.SecretTypeOpaque,
				StringData: map[string]string{"userdata": ud},
			}
			p.Objects = append(p.Objects, secret)
			ci.UserDataSecretRef = &corev1.LocalObjectReference{Name: secret.Name}
		}
		addDisk("cloudinitdisk", virtio, kubevirtv1.VolumeSource{CloudInitNoCloud: ci}, false)
	}
	vm := &kubevirtv1.VirtualMachine{
		TypeMeta:   metav1.TypeMeta{APIVersion: kubevirtv1.SchemeGroupVersion.String(), Kind: "VirtualMachine"},
		ObjectMeta: metav1.ObjectMeta{Name: o.Name, Namespace: ns, Labels: map[string]string{LabelManagedBy: ManagedBy}},
		Spec: kubevirtv1.VirtualMachineSpec{
			RunStrategy:         ptr(kubevirtv1.VirtualMachineRunStrategy(o.RunStrategy)),
			DataVolumeTemplates: templates,
			Template: &kubevirtv1.VirtualMachineInstanceTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"kubevirt.io/vm": o.Name}},
				Spec:       spec,
			},
		},
	}
	if o.InstanceType != "" {
		vm.Spec.Instancetype = &kubevirtv1.InstancetypeMatcher{Name: o.InstanceType, Kind: "VirtualMachineClusterInstancetype"}
	}
	if o.Preference != "" {
		vm.Spec.Preference = &kubevirtv1.PreferenceMatcher{Name: o.Preference, Kind: "VirtualMachineClusterPreference"}
	}
	p.Objects = append(p.Objects, vm)
	return p, nil
}

// Cozystack GVKs (no Go types: the objects are unstructured).
const cozystackAPIVersion = "apps.cozystack.io/v1alpha1"

// CozystackVMName is the VirtualMachine Cozystack renders for a VMInstance.
func CozystackVMName(instance string) string { return "vm-instance-" + instance }

// CozystackDVName is the DataVolume Cozystack renders for a VMDisk.
func CozystackDVName(disk string) string { return "vm-disk-" + disk }

func buildCozystack(o CreateOptions) (*Plan, error) {
	ns := o.Namespace
	p := &Plan{Namespace: ns, VMName: CozystackVMName(o.Name)}
	vmdisk := func(name string, spec map[string]any) *unstructured.Unstructured {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": cozystackAPIVersion, "kind": "VMDisk",
			"metadata": map[string]any{"name": name, "namespace": ns, "labels": toAny(managedLabels(o.Name))},
			"spec":     spec,
		}}
		return u
	}
	var disks []any
	switch {
	case o.Disk != nil:
		disks = append(disks, map[string]any{"name": o.Disk.Name, "bus": "virtio"})
	case o.Image != "":
		size := o.Size
		if size == "" {
			size = DefaultCozystackImageSize
		}
		name := o.Name + "-rootdisk"
		p.Objects = append(p.Objects, vmdisk(name, map[string]any{
			"source": map[string]any{"image": map[string]any{"name": o.Image}}, "optical": false,
			"storage": size, "storageClass": o.StorageClass,
		}))
		disks = append(disks, map[string]any{"name": name, "bus": "virtio"})
	}
	cdroms := func() {
		for _, c := range o.CDROMs {
			disks = append(disks, map[string]any{"name": c.Name, "bus": "sata"})
		}
	}
	if o.Disk == nil && o.Image == "" {
		cdroms()
	}
	for i, size := range o.DataDisks {
		name := o.Name + "-data" + strconv.Itoa(i+1)
		// No source: a blank disk.
		p.Objects = append(p.Objects, vmdisk(name, map[string]any{"optical": false, "storage": size, "storageClass": o.StorageClass}))
		disks = append(disks, map[string]any{"name": name, "bus": "virtio"})
	}
	if o.Disk != nil || o.Image != "" {
		cdroms()
	}
	spec := map[string]any{
		"disks":         disks,
		"runStrategy":   o.RunStrategy,
		"external":      false,
		"externalPorts": []any{int64(22)},
	}
	keys := make([]any, 0, len(o.SSHKeys))
	for _, k := range o.SSHKeys {
		keys = append(keys, k)
	}
	spec["sshKeys"] = keys
	if o.CloudInit != "" {
		spec["cloudInit"] = o.CloudInit
	}
	if o.InstanceType != "" {
		spec["instanceType"] = o.InstanceType
	} else {
		// Explicit resources: clear the chart's default instance type.
		spec["instanceType"] = ""
		spec["resources"] = map[string]any{"cpu": strconv.Itoa(int(o.CPU)), "memory": o.Memory}
	}
	if o.Preference != "" {
		spec["instanceProfile"] = o.Preference
	}
	p.Objects = append(p.Objects, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": cozystackAPIVersion, "kind": "VMInstance",
		"metadata": map[string]any{"name": o.Name, "namespace": ns, "labels": toAny(map[string]string{LabelManagedBy: ManagedBy})},
		"spec":     spec,
	}})
	return p, nil
}

func toAny(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// CreateResult reports a creation.
type CreateResult struct {
	Namespace string   `json:"namespace"`
	VM        string   `json:"vm"`
	Created   []string `json:"created"` // Kind/name, in order
	Warnings  []string `json:"warnings,omitempty"`
	// Status is set when the creation waited for Ready.
	Status *VMStatus `json:"status,omitempty"`
}

// Create validates o, checks that the disks it boots from exist, and
// creates the plan's objects. On a failure after the first object, what
// was created is deleted again (best effort) so a retry starts clean.
func (c *Client) Create(ctx context.Context, o CreateOptions) (*CreateResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	ns := c.ns(o.Namespace)
	fail := func(stage string, err error) error {
		return fmt.Errorf("create vm %s/%s: %s: %w", ns, o.Name, stage, err)
	}
	p, err := Build(o, ns)
	if err != nil {
		return nil, fail("build", err)
	}
	if err := c.checkDisks(ctx, ns, o); err != nil {
		return nil, fail("check disks", err)
	}
	res := &CreateResult{Namespace: ns, VM: p.VMName, Warnings: o.Warnings()}
	var created []client.Object
	undo := func() {
		for _, obj := range slices.Backward(created) {
			_ = c.Kube.Delete(context.WithoutCancel(ctx), obj, client.PropagationPolicy(metav1.DeletePropagationBackground))
		}
	}
	var vm *kubevirtv1.VirtualMachine
	for _, obj := range p.Objects {
		kind := obj.GetObjectKind().GroupVersionKind().Kind
		if err := c.Kube.Create(ctx, obj); err != nil {
			undo()
			if apierrors.IsAlreadyExists(err) {
				return nil, fail("create "+kind+" "+obj.GetName(), fmt.Errorf("already exists: %w", err))
			}
			return nil, fail("create "+kind+" "+obj.GetName(), err)
		}
		created = append(created, obj)
		res.Created = append(res.Created, kind+"/"+obj.GetName())
		if v, ok := obj.(*kubevirtv1.VirtualMachine); ok {
			vm = v
		}
	}
	// The cloud-init Secret goes with the VM: owned by it, so Kubernetes'
	// garbage collector deletes it with the VM.
	if vm != nil {
		for _, obj := range created {
			if s, ok := obj.(*corev1.Secret); ok {
				patch := client.MergeFrom(s.DeepCopy())
				s.OwnerReferences = append(s.OwnerReferences, metav1.OwnerReference{
					APIVersion: kubevirtv1.SchemeGroupVersion.String(), Kind: "VirtualMachine", Name: vm.Name, UID: vm.UID,
				})
				if err := c.Kube.Patch(ctx, s, patch); err != nil {
					res.Warnings = append(res.Warnings, fmt.Sprintf("secret %s: not owned by the VM (delete it with the VM): %v", s.Name, err))
				}
			}
		}
	}
	return res, nil
}

// checkDisks fails early, with the disk's name, when a disk the VM boots
// from or mounts does not exist.
func (c *Client) checkDisks(ctx context.Context, ns string, o CreateOptions) error {
	refs := slices.Clone(o.CDROMs)
	if o.Disk != nil {
		refs = append(refs, *o.Disk)
	}
	for _, d := range refs {
		var obj client.Object
		switch d.Kind {
		case "dv":
			obj = &cdiv1.DataVolume{}
		case "pvc":
			obj = &corev1.PersistentVolumeClaim{}
		case "vmdisk":
			u := &unstructured.Unstructured{}
			u.SetAPIVersion(cozystackAPIVersion)
			u.SetKind("VMDisk")
			obj = u
		}
		if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: d.Name}, obj); err != nil {
			if apierrors.IsNotFound(err) {
				return fmt.Errorf("%w: disk %s in namespace %s", ErrNotFound, d, ns)
			}
			return fmt.Errorf("get disk %s: %w", d, err)
		}
	}
	if o.Image != "" && o.Flavor == FlavorKubeVirt {
		srcNS, src, ok := strings.Cut(o.Image, "/")
		if !ok {
			srcNS, src = ns, o.Image
		}
		if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: srcNS, Name: src}, &cdiv1.DataSource{}); err != nil {
			if apierrors.IsNotFound(err) {
				return fmt.Errorf("%w: golden image (DataSource) %s/%s", ErrNotFound, srcNS, src)
			}
			// Reading another namespace's DataSource may be forbidden while
			// cloning from it is allowed (CDI checks datavolumes/source):
			// let CDI decide.
			if !apierrors.IsForbidden(err) {
				return fmt.Errorf("get DataSource %s/%s: %w", srcNS, src, err)
			}
		}
	}
	return nil
}

// WaitReady waits until the VM reports Ready (its VMI runs and is ready).
func (c *Client) WaitReady(ctx context.Context, ns, name string, timeout time.Duration) (*VMStatus, error) {
	ns = c.ns(ns)
	var st *VMStatus
	err := c.wait(ctx, timeout, func(ctx context.Context) (bool, string, error) {
		s, err := c.Get(ctx, ns, name)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				return false, "vm not found yet", nil
			}
			return false, "", err
		}
		st = s
		return s.Ready, s.describe(), nil
	})
	if err != nil {
		return st, fmt.Errorf("wait for vm %s/%s to be ready: %w", ns, name, err)
	}
	return st, nil
}
