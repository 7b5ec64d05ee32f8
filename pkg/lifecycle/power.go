package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	kubevirtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// SubresourceGroupVersion is KubeVirt's aggregated API (virt-api) that
// serves start/stop/restart/migrate on VirtualMachines.
var SubresourceGroupVersion = schema.GroupVersion{Group: "subresources.kubevirt.io", Version: "v1"}

// Action is a power action.
type Action string

const (
	ActionStart   Action = "start"
	ActionStop    Action = "stop"
	ActionRestart Action = "restart"
)

// How an action was carried out.
const (
	ViaSubresource = "subresource" // PUT …/virtualmachines/NAME/{start,stop,restart}
	ViaRunStrategy = "runStrategy" // spec.runStrategy patched
	ViaInstance    = "vmInstance"  // the Cozystack VMInstance's runStrategy patched
	ViaVMIDelete   = "vmiDelete"   // restart: the VMI deleted, KubeVirt starts a new one
	ViaNothing     = "none"        // already in the requested state
)

// PowerOptions configure Start, Stop and Restart.
type PowerOptions struct {
	Namespace, Name string
	// Wait for the VM to be Ready (start, restart) or stopped (stop);
	// Timeout bounds it (0: none).
	Wait    bool
	Timeout time.Duration
	// GracePeriod overrides the guest's shutdown grace period (stop,
	// restart; subresource API only).
	GracePeriod *int64
}

// Validate checks the options.
func (o *PowerOptions) Validate() error {
	if o.GracePeriod != nil && *o.GracePeriod < 0 {
		return errors.New("--grace-period: must not be negative")
	}
	return checkName("vm", o.Name)
}

// PowerResult reports an action.
type PowerResult struct {
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	Action    Action    `json:"action"`
	Via       string    `json:"via"`
	Status    *VMStatus `json:"status,omitempty"`
}

// Power starts, stops or restarts a VM: through KubeVirt's subresource
// API when the cluster serves it (what virtctl does: it also handles the
// Manual run strategy), otherwise by editing spec.runStrategy (or, for a
// Cozystack VM, its VMInstance's, which Cozystack would otherwise revert).
func (c *Client) Power(ctx context.Context, a Action, o PowerOptions) (*PowerResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	ns := c.ns(o.Namespace)
	fail := func(stage string, err error) error {
		return fmt.Errorf("%s vm %s/%s: %s: %w", a, ns, o.Name, stage, err)
	}
	vm, inst, err := c.resolveVM(ctx, ns, o.Name)
	if err != nil {
		return nil, fail("get VirtualMachine", err)
	}
	res := &PowerResult{Namespace: ns, Name: vm.Name, Action: a}
	var oldVMI types.UID
	if a == ActionRestart {
		vmi := &kubevirtv1.VirtualMachineInstance{}
		if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: vm.Name}, vmi); err != nil {
			if apierrors.IsNotFound(err) {
				return nil, fail("check", fmt.Errorf("%w: no VirtualMachineInstance to restart (start it instead)", ErrNotRunning))
			}
			return nil, fail("get VirtualMachineInstance", err)
		}
		oldVMI = vmi.UID
	}
	served, err := c.servesSubresources()
	if err != nil {
		return nil, fail("discover "+SubresourceGroupVersion.String(), err)
	}
	if served {
		res.Via = ViaSubresource
		if err := c.subresource(ctx, ns, vm.Name, string(a), o); err != nil {
			return nil, fail("PUT virtualmachines/"+string(a), err)
		}
	} else if res.Via, err = c.powerFallback(ctx, a, vm, inst, oldVMI); err != nil {
		return nil, fail(res.Via, err)
	}
	if !o.Wait {
		return res, nil
	}
	st, err := c.waitPower(ctx, a, ns, vm.Name, oldVMI, o.Timeout)
	res.Status = st
	if err != nil {
		return res, fail("wait", err)
	}
	return res, nil
}

func (c *Client) powerFallback(ctx context.Context, a Action, vm *kubevirtv1.VirtualMachine, inst string, oldVMI types.UID) (string, error) {
	rs, err := vm.RunStrategy()
	if err != nil {
		return "check", err
	}
	target := kubevirtv1.RunStrategyAlways
	switch a {
	case ActionStop:
		target = kubevirtv1.RunStrategyHalted
	case ActionRestart:
		if rs != kubevirtv1.RunStrategyAlways && rs != kubevirtv1.RunStrategyRerunOnFailure {
			return "check", fmt.Errorf("%w: restarting a VM with run strategy %s needs KubeVirt's subresource API (%s)", ErrUnsupported, rs, SubresourceGroupVersion)
		}
		// With Always/RerunOnFailure KubeVirt replaces a deleted VMI:
		// deleting it is a restart, and leaves nothing half done.
		vmi := &kubevirtv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Namespace: vm.Namespace, Name: vm.Name}}
		if err := c.Kube.Delete(ctx, vmi, client.Preconditions{UID: &oldVMI}); err != nil && !apierrors.IsNotFound(err) {
			return "delete VirtualMachineInstance", err
		}
		return ViaVMIDelete, nil
	}
	if a == ActionStart && (rs == kubevirtv1.RunStrategyManual || rs == kubevirtv1.RunStrategyOnce) {
		return "check", fmt.Errorf("%w: starting a VM with run strategy %s needs KubeVirt's subresource API (%s)", ErrUnsupported, rs, SubresourceGroupVersion)
	}
	if rs == target || (a == ActionStart && rs == kubevirtv1.RunStrategyRerunOnFailure) {
		return ViaNothing, nil
	}
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"runStrategy": string(target), "running": nil}})
	if inst != "" {
		// Cozystack renders the VM from the VMInstance: edit the source.
		u := &unstructured.Unstructured{}
		u.SetAPIVersion(cozystackAPIVersion)
		u.SetKind("VMInstance")
		u.SetNamespace(vm.Namespace)
		u.SetName(inst)
		p, _ := json.Marshal(map[string]any{"spec": map[string]any{"runStrategy": string(target)}})
		if err := c.Kube.Patch(ctx, u, client.RawPatch(types.MergePatchType, p)); err != nil {
			return "patch VMInstance " + inst, err
		}
		return ViaInstance, nil
	}
	if err := c.Kube.Patch(ctx, vm, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return "patch VirtualMachine spec.runStrategy", err
	}
	return ViaRunStrategy, nil
}

func (c *Client) waitPower(ctx context.Context, a Action, ns, name string, oldVMI types.UID, timeout time.Duration) (*VMStatus, error) {
	var st *VMStatus
	err := c.wait(ctx, timeout, func(ctx context.Context) (bool, string, error) {
		s, err := c.Get(ctx, ns, name)
		if err != nil {
			return false, "", err
		}
		st = s
		switch a {
		case ActionStop:
			return s.vmi == nil, s.describe(), nil
		case ActionRestart:
			return s.Ready && s.vmi != nil && s.vmi.UID != oldVMI, s.describe(), nil
		}
		return s.Ready, s.describe(), nil
	})
	return st, err
}

// servesSubresources asks discovery whether subresources.kubevirt.io/v1
// is served.
func (c *Client) servesSubresources() (bool, error) {
	if c.Config == nil {
		return false, nil
	}
	dc, err := discovery.NewDiscoveryClientForConfig(c.Config)
	if err != nil {
		return false, err
	}
	_, err = dc.ServerResourcesForGroupVersion(SubresourceGroupVersion.String())
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	}
	return false, err
}

func (c *Client) subresource(ctx context.Context, ns, name, verb string, o PowerOptions) error {
	cfg := rest.CopyConfig(c.Config)
	cfg.GroupVersion = &SubresourceGroupVersion
	cfg.APIPath = "/apis"
	cfg.ContentType = "application/json"
	cfg.NegotiatedSerializer = scheme.Codecs.WithoutConversion()
	rc, err := rest.RESTClientFor(cfg)
	if err != nil {
		return err
	}
	var body any
	switch verb {
	case "start":
		body = kubevirtv1.StartOptions{TypeMeta: metav1.TypeMeta{Kind: "StartOptions", APIVersion: SubresourceGroupVersion.String()}}
	case "stop":
		body = kubevirtv1.StopOptions{TypeMeta: metav1.TypeMeta{Kind: "StopOptions", APIVersion: SubresourceGroupVersion.String()}, GracePeriod: o.GracePeriod}
	case "restart":
		body = kubevirtv1.RestartOptions{TypeMeta: metav1.TypeMeta{Kind: "RestartOptions", APIVersion: SubresourceGroupVersion.String()}, GracePeriodSeconds: o.GracePeriod}
	}
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	return rc.Put().Namespace(ns).Resource("virtualmachines").Name(name).SubResource(verb).Body(b).Do(ctx).Error()
}
