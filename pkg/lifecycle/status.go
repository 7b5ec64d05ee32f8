package lifecycle

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	kubevirtv1 "kubevirt.io/api/core/v1"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// VMStatus is what `ferry vm get` shows.
type VMStatus struct {
	Namespace   string     `json:"namespace"`
	Name        string     `json:"name"`
	Status      string     `json:"status"` // KubeVirt's printableStatus
	Ready       bool       `json:"ready"`
	RunStrategy string     `json:"runStrategy,omitempty"`
	Phase       string     `json:"phase,omitempty"` // the VMI's
	Node        string     `json:"node,omitempty"`
	IPs         []string   `json:"ips,omitempty"`
	Created     time.Time  `json:"created"`
	Disks       []DiskInfo `json:"disks,omitempty"`
	// Reason explains a VMI that is not ready (its Ready condition).
	Reason string `json:"reason,omitempty"`
	// Instance is the Cozystack VMInstance behind the VM, if any.
	Instance string `json:"instance,omitempty"`

	vm  *kubevirtv1.VirtualMachine
	vmi *kubevirtv1.VirtualMachineInstance
}

// DiskInfo is one disk of a VM.
type DiskInfo struct {
	Volume string `json:"volume"`
	// Kind is dataVolume, persistentVolumeClaim, cloudInitNoCloud, …
	Kind string `json:"kind"`
	// Claim is the PVC (and DataVolume) name, for volumes that have one.
	Claim string `json:"claim,omitempty"`
	CDROM bool   `json:"cdrom,omitempty"`
	// Phase is the DataVolume's phase (or the PVC's, or "Missing").
	Phase       string   `json:"phase,omitempty"`
	Progress    string   `json:"progress,omitempty"`
	Size        string   `json:"size,omitempty"`
	AccessModes []string `json:"accessModes,omitempty"`
	VolumeMode  string   `json:"volumeMode,omitempty"`
	// StorageClass of the claim.
	StorageClass string `json:"storageClass,omitempty"`
}

func (s *VMStatus) describe() string {
	var b strings.Builder
	b.WriteString("status " + s.Status)
	if s.Phase != "" {
		b.WriteString(", vmi phase " + s.Phase)
	}
	if s.Reason != "" {
		b.WriteString(", " + s.Reason)
	}
	for _, d := range s.Disks {
		if d.Phase != "" && d.Phase != string(cdiv1.Succeeded) && d.Phase != string(corev1.ClaimBound) {
			fmt.Fprintf(&b, ", disk %s %s", d.Claim, d.Phase)
		}
	}
	return b.String()
}

// resolveVM finds the VirtualMachine called name, or the one Cozystack
// renders for the VMInstance called name.
func (c *Client) resolveVM(ctx context.Context, ns, name string) (*kubevirtv1.VirtualMachine, string, error) {
	vm := &kubevirtv1.VirtualMachine{}
	err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, vm)
	if err == nil {
		return vm, instanceOf(vm), nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, "", err
	}
	if strings.HasPrefix(name, "vm-instance-") {
		return nil, "", notFound(err)
	}
	if err2 := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: CozystackVMName(name)}, vm); err2 == nil {
		return vm, name, nil
	}
	return nil, "", notFound(err)
}

// instanceOf names the VMInstance a Cozystack-rendered VM comes from.
func instanceOf(vm *kubevirtv1.VirtualMachine) string {
	if n, ok := strings.CutPrefix(vm.Name, "vm-instance-"); ok {
		return n
	}
	return ""
}

// Get reads a VM, its VMI and its disks.
func (c *Client) Get(ctx context.Context, ns, name string) (*VMStatus, error) {
	ns = c.ns(ns)
	vm, inst, err := c.resolveVM(ctx, ns, name)
	if err != nil {
		return nil, fmt.Errorf("get vm %s/%s: %w", ns, name, err)
	}
	st := &VMStatus{Namespace: ns, Name: vm.Name, Status: string(vm.Status.PrintableStatus), Created: vm.CreationTimestamp.Time, Instance: inst, vm: vm}
	if st.Status == "" {
		st.Status = string(kubevirtv1.VirtualMachineStatusStopped)
	}
	if rs, err := vm.RunStrategy(); err == nil {
		st.RunStrategy = string(rs)
	}
	vmi := &kubevirtv1.VirtualMachineInstance{}
	switch err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: vm.Name}, vmi); {
	case err == nil:
		st.vmi = vmi
		st.Phase = string(vmi.Status.Phase)
		st.Node = vmi.Status.NodeName
		for _, i := range vmi.Status.Interfaces {
			for _, ip := range append([]string{i.IP}, i.IPs...) {
				if ip != "" && !slices.Contains(st.IPs, ip) {
					st.IPs = append(st.IPs, ip)
				}
			}
		}
		found, status, reason, msg := vmiCondition(vmi, kubevirtv1.VirtualMachineInstanceReady)
		// "Ready" is the VM's own report (status.ready, which KubeVirt
		// derives from the instance's Ready condition), confirmed by the
		// instance: either alone may lag behind the other.
		st.Ready = vm.Status.Ready && vmi.Status.Phase == kubevirtv1.Running && found && status == corev1.ConditionTrue
		if !st.Ready && found && (reason != "" || msg != "") {
			st.Reason = strings.TrimSpace(reason + ": " + msg)
		}
	case apierrors.IsNotFound(err):
	default:
		return nil, fmt.Errorf("get vm %s/%s: get VirtualMachineInstance: %w", ns, name, err)
	}
	disks, err := c.disks(ctx, ns, vm)
	if err != nil {
		return nil, fmt.Errorf("get vm %s/%s: %w", ns, name, err)
	}
	st.Disks = disks
	return st, nil
}

// disks lists the VM's volumes with their claims' phases and storage.
func (c *Client) disks(ctx context.Context, ns string, vm *kubevirtv1.VirtualMachine) ([]DiskInfo, error) {
	if vm.Spec.Template == nil {
		return nil, nil
	}
	cdrom := map[string]bool{}
	for _, d := range vm.Spec.Template.Spec.Domain.Devices.Disks {
		if d.CDRom != nil {
			cdrom[d.Name] = true
		}
	}
	var out []DiskInfo
	for _, v := range vm.Spec.Template.Spec.Volumes {
		d := DiskInfo{Volume: v.Name, CDROM: cdrom[v.Name]}
		switch {
		case v.DataVolume != nil:
			d.Kind, d.Claim = "dataVolume", v.DataVolume.Name
		case v.PersistentVolumeClaim != nil:
			d.Kind, d.Claim = "persistentVolumeClaim", v.PersistentVolumeClaim.ClaimName
		case v.CloudInitNoCloud != nil:
			d.Kind = "cloudInitNoCloud"
		case v.CloudInitConfigDrive != nil:
			d.Kind = "cloudInitConfigDrive"
		case v.ContainerDisk != nil:
			d.Kind = "containerDisk"
		default:
			d.Kind = "other"
		}
		if d.Claim != "" {
			if err := c.claimInfo(ctx, ns, &d, vm); err != nil {
				return nil, err
			}
		}
		out = append(out, d)
	}
	return out, nil
}

// claimInfo fills phase and storage from the DataVolume (if any) and the
// PVC (if any); the PVC is authoritative for access modes once it exists.
func (c *Client) claimInfo(ctx context.Context, ns string, d *DiskInfo, vm *kubevirtv1.VirtualMachine) error {
	key := types.NamespacedName{Namespace: ns, Name: d.Claim}
	dv := &cdiv1.DataVolume{}
	dvErr := c.Kube.Get(ctx, key, dv)
	switch {
	case dvErr == nil:
		d.Phase = string(dv.Status.Phase)
		if d.Phase == "" {
			d.Phase = "Pending"
		}
		d.Progress = string(dv.Status.Progress)
		storageFromDV(d, &dv.Spec)
	case apierrors.IsNotFound(dvErr):
		// A template's DataVolume not created yet.
		for _, t := range vm.Spec.DataVolumeTemplates {
			if t.Name == d.Claim {
				d.Phase = "Pending"
				storageFromDV(d, &t.Spec)
			}
		}
	default:
		return fmt.Errorf("get DataVolume %s: %w", d.Claim, dvErr)
	}
	pvc := &corev1.PersistentVolumeClaim{}
	switch err := c.Kube.Get(ctx, key, pvc); {
	case err == nil:
		if d.Kind == "persistentVolumeClaim" || d.Phase == "" {
			d.Phase = string(pvc.Status.Phase)
		}
		modes := pvc.Status.AccessModes
		if len(modes) == 0 {
			modes = pvc.Spec.AccessModes
		}
		if len(modes) > 0 {
			d.AccessModes = d.AccessModes[:0]
			for _, m := range modes {
				d.AccessModes = append(d.AccessModes, string(m))
			}
		}
		if pvc.Spec.VolumeMode != nil {
			d.VolumeMode = string(*pvc.Spec.VolumeMode)
		}
		if pvc.Spec.StorageClassName != nil {
			d.StorageClass = *pvc.Spec.StorageClassName
		}
		if q, ok := pvc.Status.Capacity[corev1.ResourceStorage]; ok {
			d.Size = q.String()
		} else if q, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; ok && d.Size == "" {
			d.Size = q.String()
		}
	case apierrors.IsNotFound(err):
		if d.Phase == "" {
			d.Phase = "Missing"
		}
	case apierrors.IsForbidden(err) && dvErr == nil:
		// Reading PVCs is optional when the DataVolume says enough.
	default:
		return fmt.Errorf("get PersistentVolumeClaim %s: %w", d.Claim, err)
	}
	return nil
}

func storageFromDV(d *DiskInfo, s *cdiv1.DataVolumeSpec) {
	var modes []corev1.PersistentVolumeAccessMode
	var mode *corev1.PersistentVolumeMode
	var class *string
	var req corev1.ResourceList
	switch {
	case s.Storage != nil:
		modes, mode, class, req = s.Storage.AccessModes, s.Storage.VolumeMode, s.Storage.StorageClassName, s.Storage.Resources.Requests
	case s.PVC != nil:
		modes, mode, class, req = s.PVC.AccessModes, s.PVC.VolumeMode, s.PVC.StorageClassName, s.PVC.Resources.Requests
	}
	for _, m := range modes {
		d.AccessModes = append(d.AccessModes, string(m))
	}
	if mode != nil {
		d.VolumeMode = string(*mode)
	}
	if class != nil {
		d.StorageClass = *class
	}
	if q, ok := req[corev1.ResourceStorage]; ok {
		d.Size = q.String()
	}
}

// VMSummary is one line of `ferry vm list`.
type VMSummary struct {
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	Status    string    `json:"status"`
	Ready     bool      `json:"ready"`
	Node      string    `json:"node,omitempty"`
	IPs       []string  `json:"ips,omitempty"`
	Created   time.Time `json:"created"`
}

// List lists the VMs of a namespace with their VMIs' node and IPs.
func (c *Client) List(ctx context.Context, ns string) ([]VMSummary, error) {
	ns = c.ns(ns)
	var vms kubevirtv1.VirtualMachineList
	if err := c.Kube.List(ctx, &vms, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("list vms in %s: %w", ns, err)
	}
	var vmis kubevirtv1.VirtualMachineInstanceList
	if err := c.Kube.List(ctx, &vmis, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("list vms in %s: list VirtualMachineInstances: %w", ns, err)
	}
	byName := map[string]*kubevirtv1.VirtualMachineInstance{}
	for i := range vmis.Items {
		byName[vmis.Items[i].Name] = &vmis.Items[i]
	}
	out := make([]VMSummary, 0, len(vms.Items))
	for _, vm := range vms.Items {
		s := VMSummary{Namespace: ns, Name: vm.Name, Status: string(vm.Status.PrintableStatus), Ready: vm.Status.Ready, Created: vm.CreationTimestamp.Time}
		if s.Status == "" {
			s.Status = string(kubevirtv1.VirtualMachineStatusStopped)
		}
		if vmi := byName[vm.Name]; vmi != nil {
			s.Node = vmi.Status.NodeName
			for _, i := range vmi.Status.Interfaces {
				if i.IP != "" {
					s.IPs = append(s.IPs, i.IP)
				}
			}
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b VMSummary) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// cozystackInstance reads a VMInstance (nil when absent).
func (c *Client) cozystackInstance(ctx context.Context, ns, name string) (*unstructured.Unstructured, error) {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(cozystackAPIVersion)
	u.SetKind("VMInstance")
	if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, u); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	return u, nil
}
