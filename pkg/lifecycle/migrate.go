package lifecycle

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubevirtv1 "kubevirt.io/api/core/v1"
)

// MigrateOptions configure Migrate.
type MigrateOptions struct {
	Namespace, VM string
	// Wait for the migration to finish; Timeout bounds it (0: none).
	Wait    bool
	Timeout time.Duration
}

// Validate checks the options.
func (o *MigrateOptions) Validate() error { return checkName("vm", o.VM) }

// MigrationResult reports a live migration.
type MigrationResult struct {
	Namespace  string `json:"namespace"`
	VM         string `json:"vm"`
	Migration  string `json:"migration"`
	Phase      string `json:"phase"`
	SourceNode string `json:"sourceNode,omitempty"`
	TargetNode string `json:"targetNode,omitempty"`
	// DurationSeconds is from the migration's start to its end as KubeVirt
	// recorded them (whole seconds: API timestamps); ObservedSeconds is
	// from ferry creating the migration to seeing it succeed.
	DurationSeconds float64 `json:"durationSeconds"`
	ObservedSeconds float64 `json:"observedSeconds,omitempty"`
	FailureReason   string  `json:"failureReason,omitempty"`
}

// MigrationPreflight checks what KubeVirt would refuse, so the user gets
// a clear answer instead of a migration object that fails: the VM must
// be running, and every disk volume must be ReadWriteMany (the target
// node opens it while the source still has it).
func (c *Client) MigrationPreflight(ctx context.Context, ns, vmName string) (*kubevirtv1.VirtualMachineInstance, []string, error) {
	ns = c.ns(ns)
	vm, _, err := c.resolveVM(ctx, ns, vmName)
	if err != nil {
		return nil, nil, err
	}
	vmi := &kubevirtv1.VirtualMachineInstance{}
	if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: vm.Name}, vmi); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil, fmt.Errorf("%w: no VirtualMachineInstance (status %s)", ErrNotRunning, orStopped(vm.Status.PrintableStatus))
		}
		return nil, nil, fmt.Errorf("get VirtualMachineInstance: %w", err)
	}
	if vmi.Status.Phase != kubevirtv1.Running {
		return nil, nil, fmt.Errorf("%w: VirtualMachineInstance phase %s", ErrNotRunning, orPending(vmi.Status.Phase))
	}
	var problems []string
	if found, status, reason, msg := vmiCondition(vmi, kubevirtv1.VirtualMachineInstanceIsMigratable); found && status == corev1.ConditionFalse {
		problems = append(problems, strings.TrimSpace("KubeVirt reports LiveMigratable=False: "+reason+" "+msg))
	}
	cdrom := map[string]bool{}
	for _, d := range vmi.Spec.Domain.Devices.Disks {
		cdrom[d.Name] = d.CDRom != nil
	}
	vmForDisks := vm.DeepCopy()
	if vmForDisks.Spec.Template != nil {
		// The running instance's volumes are what migrate (hotplugs too).
		vmForDisks.Spec.Template.Spec.Volumes = vmi.Spec.Volumes
		vmForDisks.Spec.Template.Spec.Domain.Devices.Disks = vmi.Spec.Domain.Devices.Disks
	}
	disks, err := c.disks(ctx, ns, vmForDisks)
	if err != nil {
		return nil, nil, err
	}
	for _, d := range disks {
		if d.Claim == "" {
			continue
		}
		switch {
		case len(d.AccessModes) == 0:
			problems = append(problems, fmt.Sprintf("volume %s (claim %s): access mode unknown (no PersistentVolumeClaim yet, none requested)", d.Volume, d.Claim))
		case !slices.Contains(d.AccessModes, string(corev1.ReadWriteMany)):
			problems = append(problems, fmt.Sprintf("volume %s (claim %s) is %s, not ReadWriteMany: both nodes must open it during the migration", d.Volume, d.Claim, strings.Join(d.AccessModes, ",")))
		}
	}
	return vmi, problems, nil
}

func orStopped(s kubevirtv1.VirtualMachinePrintableStatus) string {
	if s == "" {
		return string(kubevirtv1.VirtualMachineStatusStopped)
	}
	return string(s)
}

func orPending(p kubevirtv1.VirtualMachineInstancePhase) string {
	if p == "" {
		return string(kubevirtv1.Pending)
	}
	return string(p)
}

// Migrate live-migrates a running VM to another node by creating a
// VirtualMachineInstanceMigration, after a preflight that refuses
// (ErrNotRunning, ErrNotMigratable) what KubeVirt would refuse.
func (c *Client) Migrate(ctx context.Context, o MigrateOptions) (*MigrationResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	ns := c.ns(o.Namespace)
	fail := func(stage string, err error) error {
		return fmt.Errorf("migrate vm %s/%s: %s: %w", ns, o.VM, stage, err)
	}
	vmi, problems, err := c.MigrationPreflight(ctx, ns, o.VM)
	if err != nil {
		return nil, fail("preflight", err)
	}
	if len(problems) > 0 {
		return nil, fail("preflight", fmt.Errorf("%w: %s", ErrNotMigratable, strings.Join(problems, "; ")))
	}
	m := &kubevirtv1.VirtualMachineInstanceMigration{
		TypeMeta:   metav1.TypeMeta{APIVersion: kubevirtv1.SchemeGroupVersion.String(), Kind: "VirtualMachineInstanceMigration"},
		ObjectMeta: metav1.ObjectMeta{GenerateName: vmi.Name + "-migration-", Namespace: ns, Labels: managedLabels(vmi.Name)},
		Spec:       kubevirtv1.VirtualMachineInstanceMigrationSpec{VMIName: vmi.Name},
	}
	created := c.now()
	if err := c.Kube.Create(ctx, m); err != nil {
		return nil, fail("create VirtualMachineInstanceMigration", err)
	}
	res := &MigrationResult{Namespace: ns, VM: vmi.Name, Migration: m.Name, Phase: string(m.Status.Phase), SourceNode: vmi.Status.NodeName}
	if res.Phase == "" {
		res.Phase = string(kubevirtv1.MigrationPending)
	}
	if !o.Wait {
		return res, nil
	}
	err = c.wait(ctx, o.Timeout, func(ctx context.Context) (bool, string, error) {
		got := &kubevirtv1.VirtualMachineInstanceMigration{}
		if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: m.Name}, got); err != nil {
			return false, "", notFound(err)
		}
		res.Phase = string(got.Status.Phase)
		if ms := got.Status.MigrationState; ms != nil {
			if ms.SourceNode != "" {
				res.SourceNode = ms.SourceNode
			}
			res.TargetNode = ms.TargetNode
			res.FailureReason = ms.FailureReason
			if ms.StartTimestamp != nil && ms.EndTimestamp != nil {
				res.DurationSeconds = ms.EndTimestamp.Sub(ms.StartTimestamp.Time).Seconds()
			}
		}
		switch got.Status.Phase {
		case kubevirtv1.MigrationSucceeded:
			res.ObservedSeconds = c.now().Sub(created).Seconds()
			return true, "", nil
		case kubevirtv1.MigrationFailed:
			reason := res.FailureReason
			if reason == "" {
				reason = "no reason reported"
			}
			return false, "", fmt.Errorf("%w: %s", ErrFailed, reason)
		}
		return false, "phase " + orPendingM(got.Status.Phase), nil
	})
	if err != nil {
		return res, fail("wait for VirtualMachineInstanceMigration "+m.Name, err)
	}
	return res, nil
}

func orPendingM(p kubevirtv1.VirtualMachineInstanceMigrationPhase) string {
	if p == "" {
		return string(kubevirtv1.MigrationPending)
	}
	return string(p)
}
