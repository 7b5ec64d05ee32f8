package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// DeleteOptions configure Delete.
type DeleteOptions struct {
	Namespace, Name string
	// KeepDisks keeps the VM's disks (DataVolumes, or VMDisks): they are
	// released from the VM so the garbage collector leaves them.
	KeepDisks bool
}

// Validate checks the options.
func (o *DeleteOptions) Validate() error { return checkName("vm", o.Name) }

// DeleteResult reports a deletion.
type DeleteResult struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Deleted and Kept list Kind/name.
	Deleted []string `json:"deleted"`
	Kept    []string `json:"kept,omitempty"`
}

// Delete deletes a VM and, unless KeepDisks, its disks (CD-ROMs are
// always kept: an ISO is typically shared). A Cozystack VM is deleted
// through its VMInstance (and VMDisks).
func (c *Client) Delete(ctx context.Context, o DeleteOptions) (*DeleteResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	ns := c.ns(o.Namespace)
	fail := func(stage string, err error) error {
		return fmt.Errorf("delete vm %s/%s: %s: %w", ns, o.Name, stage, err)
	}
	vm, inst, err := c.resolveVM(ctx, ns, o.Name)
	// Not found may still be a VMInstance Cozystack has not rendered yet.
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, fail("get VirtualMachine", err)
	}
	res := &DeleteResult{Namespace: ns, Name: o.Name}
	if inst == "" && vm == nil {
		inst = o.Name
	}
	if inst != "" {
		u, err := c.cozystackInstance(ctx, ns, inst)
		if err != nil {
			return nil, fail("get VMInstance", err)
		}
		if u != nil {
			return c.deleteInstance(ctx, ns, u, o, res, fail)
		}
		if vm == nil {
			return nil, fail("get VirtualMachine", fmt.Errorf("%w: no VirtualMachine nor VMInstance %s", ErrNotFound, o.Name))
		}
	}
	disks, err := c.disks(ctx, ns, vm)
	if err != nil {
		return nil, fail("list disks", err)
	}
	for _, d := range disks {
		if d.Claim == "" {
			continue
		}
		kind := "DataVolume"
		if d.Kind == "persistentVolumeClaim" {
			kind = "PersistentVolumeClaim"
		}
		if o.KeepDisks || d.CDROM {
			// Release template DataVolumes from the VM first, or the
			// garbage collector takes them with it.
			if d.Kind == "dataVolume" {
				if err := c.disown(ctx, ns, d.Claim, vm.UID); err != nil {
					return nil, fail("release DataVolume "+d.Claim, err)
				}
			}
			res.Kept = append(res.Kept, kind+"/"+d.Claim)
		}
	}
	if err := c.Kube.Delete(ctx, vm, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil && !apierrors.IsNotFound(err) {
		return nil, fail("delete VirtualMachine", err)
	}
	res.Deleted = append(res.Deleted, "VirtualMachine/"+vm.Name)
	if o.KeepDisks {
		return res, nil
	}
	for _, d := range disks {
		if d.Claim == "" || d.CDROM {
			continue
		}
		var obj client.Object = &cdiv1.DataVolume{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: d.Claim}}
		kind := "DataVolume"
		if d.Kind == "persistentVolumeClaim" {
			obj, kind = pvcObject(ns, d.Claim), "PersistentVolumeClaim"
		}
		if err := c.Kube.Delete(ctx, obj, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil && !apierrors.IsNotFound(err) {
			return res, fail("delete "+kind+" "+d.Claim, err)
		}
		res.Deleted = append(res.Deleted, kind+"/"+d.Claim)
	}
	return res, nil
}

// disown removes the VM's owner reference from a DataVolume.
func (c *Client) disown(ctx context.Context, ns, name string, owner types.UID) error {
	dv := &cdiv1.DataVolume{}
	if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, dv); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	refs := slices.DeleteFunc(slices.Clone(dv.OwnerReferences), func(r metav1.OwnerReference) bool { return r.UID == owner })
	if len(refs) == len(dv.OwnerReferences) {
		return nil
	}
	patch := client.MergeFromWithOptions(dv.DeepCopy(), client.MergeFromWithOptimisticLock{})
	dv.OwnerReferences = refs
	return c.Kube.Patch(ctx, dv, patch)
}

func (c *Client) deleteInstance(ctx context.Context, ns string, u *unstructured.Unstructured, o DeleteOptions, res *DeleteResult, fail func(string, error) error) (*DeleteResult, error) {
	var vmdisks []string
	disks, _, _ := unstructured.NestedSlice(u.Object, "spec", "disks")
	for _, d := range disks {
		m, _ := d.(map[string]any)
		name, _ := m["name"].(string)
		if name == "" {
			continue
		}
		disk := &unstructured.Unstructured{}
		disk.SetAPIVersion(cozystackAPIVersion)
		disk.SetKind("VMDisk")
		if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, disk); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return nil, fail("get VMDisk "+name, err)
		}
		if optical, _, _ := unstructured.NestedBool(disk.Object, "spec", "optical"); optical || o.KeepDisks {
			res.Kept = append(res.Kept, "VMDisk/"+name)
			continue
		}
		vmdisks = append(vmdisks, name)
	}
	if err := c.Kube.Delete(ctx, u); err != nil && !apierrors.IsNotFound(err) {
		return nil, fail("delete VMInstance", err)
	}
	res.Deleted = append(res.Deleted, "VMInstance/"+u.GetName())
	for _, name := range vmdisks {
		disk := &unstructured.Unstructured{}
		disk.SetAPIVersion(cozystackAPIVersion)
		disk.SetKind("VMDisk")
		disk.SetNamespace(ns)
		disk.SetName(name)
		if err := c.Kube.Delete(ctx, disk); err != nil && !apierrors.IsNotFound(err) {
			return res, fail("delete VMDisk "+name, err)
		}
		res.Deleted = append(res.Deleted, "VMDisk/"+name)
	}
	return res, nil
}

func pvcObject(ns, name string) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
}
