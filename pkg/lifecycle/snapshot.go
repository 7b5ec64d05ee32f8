package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubevirtv1 "kubevirt.io/api/core/v1"
	snapshotv1 "kubevirt.io/api/snapshot/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// SnapshotOptions configure Snapshot.
type SnapshotOptions struct {
	Namespace, VM string
	// Name of the snapshot (default VM-YYYYMMDD-HHMMSS).
	Name string
	// Wait for ReadyToUse; Timeout bounds it (0: none).
	Wait    bool
	Timeout time.Duration
	// Labels are added to the snapshot (backups mark theirs).
	Labels map[string]string
}

// Validate checks the options.
func (o *SnapshotOptions) Validate() error {
	if err := checkName("vm", o.VM); err != nil {
		return err
	}
	if o.Name != "" {
		return checkName("snapshot", o.Name)
	}
	return nil
}

// SnapshotInfo describes a VirtualMachineSnapshot.
type SnapshotInfo struct {
	Namespace  string     `json:"namespace"`
	Name       string     `json:"name"`
	VM         string     `json:"vm"`
	Phase      string     `json:"phase"`
	ReadyToUse bool       `json:"readyToUse"`
	Created    *time.Time `json:"created,omitempty"`
	// Indications are KubeVirt's (Online, NoGuestAgent, GuestAgent,
	// QuiesceFailed, Paused); Notes explain them.
	Indications []string `json:"indications,omitempty"`
	Notes       []string `json:"notes,omitempty"`
	Volumes     []string `json:"volumes,omitempty"`
	Excluded    []string `json:"excludedVolumes,omitempty"`
	Error       string   `json:"error,omitempty"`
}

// indicationNotes explains what an indication means for consistency.
var indicationNotes = map[snapshotv1.Indication]string{
	snapshotv1.VMSnapshotOnlineSnapshotIndication: "taken while the VM was running",
	snapshotv1.VMSnapshotNoGuestAgentIndication:   "no guest agent: filesystems were not frozen (crash-consistent)",
	snapshotv1.VMSnapshotGuestAgentIndication:     "guest agent froze the filesystems (application-consistent)",
	snapshotv1.VMSnapshotQuiesceFailedIndication:  "freezing the filesystems failed (crash-consistent)",
	snapshotv1.VMSnapshotPausedIndication:         "the VM was paused",
}

func snapshotInfo(s *snapshotv1.VirtualMachineSnapshot) SnapshotInfo {
	in := SnapshotInfo{Namespace: s.Namespace, Name: s.Name, VM: s.Spec.Source.Name}
	if st := s.Status; st != nil {
		in.Phase = string(st.Phase)
		in.ReadyToUse = st.ReadyToUse != nil && *st.ReadyToUse
		if st.CreationTime != nil {
			in.Created = ptr(st.CreationTime.Time)
		}
		for _, i := range st.Indications {
			in.Indications = append(in.Indications, string(i))
			if n, ok := indicationNotes[i]; ok {
				in.Notes = append(in.Notes, string(i)+": "+n)
			}
		}
		if st.SnapshotVolumes != nil {
			in.Volumes, in.Excluded = st.SnapshotVolumes.IncludedVolumes, st.SnapshotVolumes.ExcludedVolumes
		}
		if st.Error != nil && st.Error.Message != nil {
			in.Error = *st.Error.Message
		}
	}
	if in.Phase == "" {
		in.Phase = "Pending"
	}
	return in
}

// Snapshot creates a VirtualMachineSnapshot of a VM and, with Wait, waits
// until it is ReadyToUse.
func (c *Client) Snapshot(ctx context.Context, o SnapshotOptions) (*SnapshotInfo, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	ns := c.ns(o.Namespace)
	fail := func(stage string, err error) error {
		return fmt.Errorf("snapshot vm %s/%s: %s: %w", ns, o.VM, stage, err)
	}
	vm, _, err := c.resolveVM(ctx, ns, o.VM)
	if err != nil {
		return nil, fail("get VirtualMachine", err)
	}
	name := o.Name
	if name == "" {
		name = vm.Name + "-" + c.now().UTC().Format("20060102-150405")
	}
	labels := managedLabels(vm.Name)
	for k, v := range o.Labels {
		labels[k] = v
	}
	s := &snapshotv1.VirtualMachineSnapshot{
		TypeMeta:   metav1.TypeMeta{APIVersion: snapshotv1.SchemeGroupVersion.String(), Kind: "VirtualMachineSnapshot"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: snapshotv1.VirtualMachineSnapshotSpec{
			Source: corev1.TypedLocalObjectReference{APIGroup: ptr(kubevirtv1.SchemeGroupVersion.Group), Kind: "VirtualMachine", Name: vm.Name},
		},
	}
	if err := c.Kube.Create(ctx, s); err != nil {
		return nil, fail("create VirtualMachineSnapshot "+name, err)
	}
	if !o.Wait {
		in := snapshotInfo(s)
		return &in, nil
	}
	in, err := c.waitSnapshot(ctx, ns, name, o.Timeout)
	if err != nil {
		return in, fail("wait for VirtualMachineSnapshot "+name, err)
	}
	return in, nil
}

func (c *Client) waitSnapshot(ctx context.Context, ns, name string, timeout time.Duration) (*SnapshotInfo, error) {
	var in SnapshotInfo
	err := c.wait(ctx, timeout, func(ctx context.Context) (bool, string, error) {
		s := &snapshotv1.VirtualMachineSnapshot{}
		if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, s); err != nil {
			return false, "", notFound(err)
		}
		in = snapshotInfo(s)
		if in.Phase == string(snapshotv1.Failed) {
			msg := in.Error
			if msg == "" {
				msg = "no error message"
			}
			return false, "", fmt.Errorf("%w: %s", ErrFailed, msg)
		}
		status := "phase " + in.Phase
		if in.Error != "" {
			status += ": " + in.Error
		}
		return in.ReadyToUse, status, nil
	})
	return &in, err
}

// Snapshots lists a VM's snapshots, oldest first.
func (c *Client) Snapshots(ctx context.Context, ns, vm string) ([]SnapshotInfo, error) {
	ns = c.ns(ns)
	target := vm
	if v, _, err := c.resolveVM(ctx, ns, vm); err == nil {
		target = v.Name
	} else if !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("list snapshots of vm %s/%s: %w", ns, vm, err)
	}
	var list snapshotv1.VirtualMachineSnapshotList
	if err := c.Kube.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("list snapshots of vm %s/%s: list VirtualMachineSnapshots: %w", ns, vm, err)
	}
	var out []SnapshotInfo
	for i := range list.Items {
		if list.Items[i].Spec.Source.Kind == "VirtualMachine" && list.Items[i].Spec.Source.Name == target {
			out = append(out, snapshotInfo(&list.Items[i]))
		}
	}
	slices.SortFunc(out, func(a, b SnapshotInfo) int {
		if a.Created != nil && b.Created != nil && !a.Created.Equal(*b.Created) {
			return a.Created.Compare(*b.Created)
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out, nil
}

// RestoreOptions configure Restore.
type RestoreOptions struct {
	Namespace, VM string
	Snapshot      string
	// Name of the VirtualMachineRestore (default SNAPSHOT-restore-TIME).
	Name string
	// Stop a running VM first (and start it again once restored).
	// Without it, restoring a running VM is refused.
	Stop bool
	// Wait for completion (implied by Stop); Timeout bounds each wait.
	Wait    bool
	Timeout time.Duration
}

// Validate checks the options.
func (o *RestoreOptions) Validate() error {
	if err := checkName("vm", o.VM); err != nil {
		return err
	}
	if err := checkName("snapshot", o.Snapshot); err != nil {
		return err
	}
	if o.Name != "" {
		return checkName("restore", o.Name)
	}
	return nil
}

// RestoreResult reports a restore.
type RestoreResult struct {
	Namespace string `json:"namespace"`
	VM        string `json:"vm"`
	Snapshot  string `json:"snapshot"`
	Restore   string `json:"restore"`
	Complete  bool   `json:"complete"`
	// Stopped and Restarted: the VM was stopped for the restore and
	// started again.
	Stopped   bool `json:"stopped,omitempty"`
	Restarted bool `json:"restarted,omitempty"`
	// Volumes maps restored volumes to their new claims.
	Volumes map[string]string `json:"volumes,omitempty"`
}

// Restore restores a VM from one of its snapshots (VirtualMachineRestore).
// KubeVirt restores a stopped VM only: a running one is refused with
// ErrRunning unless Stop, which stops it, restores, and starts it again.
func (c *Client) Restore(ctx context.Context, o RestoreOptions) (*RestoreResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	ns := c.ns(o.Namespace)
	fail := func(stage string, err error) error {
		return fmt.Errorf("restore vm %s/%s: %s: %w", ns, o.VM, stage, err)
	}
	vm, _, err := c.resolveVM(ctx, ns, o.VM)
	if err != nil {
		return nil, fail("get VirtualMachine", err)
	}
	snap := &snapshotv1.VirtualMachineSnapshot{}
	if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: o.Snapshot}, snap); err != nil {
		return nil, fail("get VirtualMachineSnapshot "+o.Snapshot, notFound(err))
	}
	if snap.Spec.Source.Name != vm.Name {
		return nil, fail("check", fmt.Errorf("snapshot %s is of vm %s, not %s", o.Snapshot, snap.Spec.Source.Name, vm.Name))
	}
	if in := snapshotInfo(snap); !in.ReadyToUse {
		return nil, fail("check", fmt.Errorf("snapshot %s is not ready to use (phase %s)", o.Snapshot, in.Phase))
	}
	res := &RestoreResult{Namespace: ns, VM: vm.Name, Snapshot: o.Snapshot}
	vmi := &kubevirtv1.VirtualMachineInstance{}
	running := true
	if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: vm.Name}, vmi); err != nil {
		if !apierrors.IsNotFound(err) {
			return nil, fail("get VirtualMachineInstance", err)
		}
		running = false
	} else if vmi.IsFinal() {
		running = false
	}
	if running {
		if !o.Stop {
			return nil, fail("check", fmt.Errorf("%w (phase %s on %s): KubeVirt restores stopped VMs only; stop it first (ferry vm stop %s) or pass --stop", ErrRunning, vmi.Status.Phase, vmi.Status.NodeName, o.VM))
		}
		if _, err := c.Power(ctx, ActionStop, PowerOptions{Namespace: ns, Name: o.VM, Wait: true, Timeout: o.Timeout}); err != nil {
			return nil, fail("stop", err)
		}
		res.Stopped = true
	}
	name := o.Name
	if name == "" {
		name = o.Snapshot + "-restore-" + c.now().UTC().Format("150405")
	}
	r := &snapshotv1.VirtualMachineRestore{
		TypeMeta:   metav1.TypeMeta{APIVersion: snapshotv1.SchemeGroupVersion.String(), Kind: "VirtualMachineRestore"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: managedLabels(vm.Name)},
		Spec: snapshotv1.VirtualMachineRestoreSpec{
			Target:                     corev1.TypedLocalObjectReference{APIGroup: ptr(kubevirtv1.SchemeGroupVersion.Group), Kind: "VirtualMachine", Name: vm.Name},
			VirtualMachineSnapshotName: o.Snapshot,
		},
	}
	if err := c.Kube.Create(ctx, r); err != nil {
		return res, fail("create VirtualMachineRestore "+name, err)
	}
	res.Restore = name
	if !o.Wait && !o.Stop {
		return res, nil
	}
	err = c.wait(ctx, o.Timeout, func(ctx context.Context) (bool, string, error) {
		got := &snapshotv1.VirtualMachineRestore{}
		if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, got); err != nil {
			return false, "", notFound(err)
		}
		st := got.Status
		if st == nil {
			return false, "no status yet", nil
		}
		status := ""
		for _, cond := range st.Conditions {
			if cond.Type == snapshotv1.ConditionFailure && cond.Status == corev1.ConditionTrue {
				return false, "", fmt.Errorf("%w: %s: %s", ErrFailed, cond.Reason, cond.Message)
			}
			if cond.Type == snapshotv1.ConditionProgressing || cond.Type == snapshotv1.ConditionReady {
				status = strings.TrimSpace(fmt.Sprintf("%s=%s %s", cond.Type, cond.Status, cond.Message))
			}
		}
		if st.Complete != nil && *st.Complete {
			res.Complete = true
			res.Volumes = map[string]string{}
			for _, v := range st.Restores {
				res.Volumes[v.VolumeName] = v.PersistentVolumeClaimName
			}
			return true, "", nil
		}
		return false, status, nil
	})
	if err != nil {
		return res, fail("wait for VirtualMachineRestore "+name, err)
	}
	if res.Stopped {
		// KubeVirt keeps the run strategy the VM had when restored
		// (Halted): give back the one it had before.
		if _, err := c.Power(ctx, ActionStart, PowerOptions{Namespace: ns, Name: o.VM}); err != nil {
			return res, fail("start again", err)
		}
		res.Restarted = true
	}
	return res, nil
}
