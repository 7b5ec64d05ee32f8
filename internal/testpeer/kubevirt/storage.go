package kubevirt

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
	exportv1 "kubevirt.io/api/export/v1beta1"
	snapshotv1 "kubevirt.io/api/snapshot/v1beta1"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ---- snapshots ----

func (p *Peer) reconcileSnapshots(ctx context.Context) error {
	var list snapshotv1.VirtualMachineSnapshotList
	if err := p.Client.List(ctx, &list); err != nil {
		return err
	}
	for i := range list.Items {
		s := &list.Items[i]
		if s.DeletionTimestamp != nil || (s.Status != nil && (s.Status.Phase == snapshotv1.Succeeded || s.Status.Phase == snapshotv1.Failed)) {
			continue
		}
		k := key(s.Namespace, s.Name)
		vm := &kubevirtv1.VirtualMachine{}
		if err := p.Client.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: s.Spec.Source.Name}, vm); err != nil {
			if apierrors.IsNotFound(err) {
				s.Status = &snapshotv1.VirtualMachineSnapshotStatus{Phase: snapshotv1.InProgress,
					Conditions: []snapshotv1.Condition{{Type: snapshotv1.ConditionProgressing, Status: corev1.ConditionFalse, Reason: "Source does not exist"}}}
				p.fail(p.Client.Status().Update(ctx, s))
				continue
			}
			return err
		}
		if s.Status == nil || s.Status.Phase == "" {
			// First tick: freeze the contents and the spec, report progress.
			p.mu.Lock()
			data, claims := map[string][]byte{}, map[string]string{}
			for _, v := range vm.Spec.Template.Spec.Volumes {
				if c := claimOf(v); c != "" {
					data[v.Name] = slices.Clone(p.disks[key(s.Namespace, c)])
					claims[v.Name] = c
				}
			}
			p.snapDisks[k], p.snapClaims[k] = data, claims
			p.snapSpecs[k] = vm.Spec.DeepCopy()
			failing := p.failSnapshots
			p.mu.Unlock()
			s.Status = &snapshotv1.VirtualMachineSnapshotStatus{SourceUID: &vm.UID, Phase: snapshotv1.InProgress, ReadyToUse: ptr(false),
				Conditions: []snapshotv1.Condition{{Type: snapshotv1.ConditionProgressing, Status: corev1.ConditionTrue, Reason: "Operation in progress"}}}
			if failing {
				msg := "Failed to freeze guest filesystems"
				s.Status.Phase = snapshotv1.Failed
				s.Status.Error = &snapshotv1.Error{Time: ptr(metav1.Now()), Message: &msg}
			}
			p.fail(p.Client.Status().Update(ctx, s))
			continue
		}
		vmi := &kubevirtv1.VirtualMachineInstance{}
		online := p.Client.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: vm.Name}, vmi) == nil
		st := s.Status
		st.Phase = snapshotv1.Succeeded
		st.ReadyToUse = ptr(true)
		st.CreationTime = ptr(metav1.Now())
		st.Conditions = []snapshotv1.Condition{
			{Type: snapshotv1.ConditionProgressing, Status: corev1.ConditionFalse, Reason: "Operation complete"},
			{Type: snapshotv1.ConditionReady, Status: corev1.ConditionTrue, Reason: "Operation complete"},
		}
		if online {
			// No guest agent in these VMs: crash-consistent.
			st.Indications = []snapshotv1.Indication{snapshotv1.VMSnapshotOnlineSnapshotIndication, snapshotv1.VMSnapshotNoGuestAgentIndication}
			st.SourceIndications = []snapshotv1.SourceIndication{
				{Indication: snapshotv1.VMSnapshotOnlineSnapshotIndication, Message: "Snapshot was taken while the VM was running"},
				{Indication: snapshotv1.VMSnapshotNoGuestAgentIndication, Message: "No guest agent: filesystems were not frozen"},
			}
		}
		p.mu.Lock()
		vols := slices.Sorted(mapsKeys(p.snapClaims[k]))
		p.mu.Unlock()
		st.SnapshotVolumes = &snapshotv1.SnapshotVolumesLists{IncludedVolumes: vols}
		st.VirtualMachineSnapshotContentName = ptr("vmsnapshot-content-" + string(s.UID))
		p.fail(p.Client.Status().Update(ctx, s))
	}
	return nil
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// ---- restores ----

func (p *Peer) reconcileRestores(ctx context.Context) error {
	var list snapshotv1.VirtualMachineRestoreList
	if err := p.Client.List(ctx, &list); err != nil {
		return err
	}
	for i := range list.Items {
		r := &list.Items[i]
		if r.DeletionTimestamp != nil || (r.Status != nil && r.Status.Complete != nil && *r.Status.Complete) {
			continue
		}
		sk := key(r.Namespace, r.Spec.VirtualMachineSnapshotName)
		p.mu.Lock()
		spec, data, claims := p.snapSpecs[sk], p.snapDisks[sk], p.snapClaims[sk]
		p.mu.Unlock()
		vm := &kubevirtv1.VirtualMachine{}
		if err := p.Client.Get(ctx, types.NamespacedName{Namespace: r.Namespace, Name: r.Spec.Target.Name}, vm); err != nil {
			return client.IgnoreNotFound(err)
		}
		progress := func(reason string) {
			r.Status = &snapshotv1.VirtualMachineRestoreStatus{Complete: ptr(false), Conditions: []snapshotv1.Condition{
				{Type: snapshotv1.ConditionProgressing, Status: corev1.ConditionFalse, Reason: reason, Message: reason},
				{Type: snapshotv1.ConditionReady, Status: corev1.ConditionFalse, Reason: reason, Message: reason},
			}}
			p.fail(p.Client.Status().Update(ctx, r))
		}
		if spec == nil {
			progress("snapshot " + r.Spec.VirtualMachineSnapshotName + " unknown or not ready")
			continue
		}
		vmi := &kubevirtv1.VirtualMachineInstance{}
		if err := p.Client.Get(ctx, types.NamespacedName{Namespace: r.Namespace, Name: vm.Name}, vmi); err == nil {
			// KubeVirt waits (then fails) while the target runs.
			progress("Waiting for target to be ready")
			continue
		}
		// New claims restore-UID-VOLUME hold the snapshot's contents; the
		// VM gets the snapshot's spec with its volumes on them, and keeps
		// its run strategy.
		newSpec := spec.DeepCopy()
		newSpec.RunStrategy, newSpec.Running = vm.Spec.RunStrategy, vm.Spec.Running
		newSpec.DataVolumeTemplates = nil
		st := &snapshotv1.VirtualMachineRestoreStatus{Complete: ptr(true), RestoreTime: ptr(metav1.Now())}
		uid := strings.Split(string(r.UID), "-")[0]
		for vi, v := range newSpec.Template.Spec.Volumes {
			old, ok := claims[v.Name]
			if !ok {
				continue
			}
			name := "restore-" + uid + "-" + v.Name
			src := &cdiv1.DataVolume{}
			if err := p.Client.Get(ctx, types.NamespacedName{Namespace: r.Namespace, Name: old}, src); err != nil {
				src.Spec.Storage = &cdiv1.StorageSpec{}
			}
			dv := &cdiv1.DataVolume{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: r.Namespace, Labels: map[string]string{"ferry-test/restored": "true"},
					OwnerReferences: []metav1.OwnerReference{{APIVersion: "kubevirt.io/v1", Kind: "VirtualMachine", Name: vm.Name, UID: vm.UID}}},
				Spec: cdiv1.DataVolumeSpec{Source: &cdiv1.DataVolumeSource{Snapshot: &cdiv1.DataVolumeSourceSnapshot{Namespace: r.Namespace, Name: "vmsnapshot-" + uid + "-volume-" + v.Name}},
					Storage: src.Spec.Storage, PVC: src.Spec.PVC},
			}
			if err := p.Client.Create(ctx, dv); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("restore %s: create DataVolume %s: %w", r.Name, name, err)
			}
			p.SetDisk(r.Namespace, name, data[v.Name])
			newSpec.Template.Spec.Volumes[vi].VolumeSource = kubevirtv1.VolumeSource{DataVolume: &kubevirtv1.DataVolumeSource{Name: name}}
			st.Restores = append(st.Restores, snapshotv1.VolumeRestore{VolumeName: v.Name, PersistentVolumeClaimName: name, VolumeSnapshotName: "vmsnapshot-" + uid + "-volume-" + v.Name, DataVolumeName: ptr(name)})
		}
		vm.Spec = *newSpec
		if err := p.Client.Update(ctx, vm); err != nil {
			return err
		}
		st.Conditions = []snapshotv1.Condition{
			{Type: snapshotv1.ConditionProgressing, Status: corev1.ConditionFalse, Reason: "Operation complete"},
			{Type: snapshotv1.ConditionReady, Status: corev1.ConditionTrue, Reason: "Operation complete"},
		}
		r.Status = st
		p.fail(p.Client.Status().Update(ctx, r))
	}
	return nil
}

// ---- migrations ----

func (p *Peer) reconcileMigrations(ctx context.Context) error {
	var list kubevirtv1.VirtualMachineInstanceMigrationList
	if err := p.Client.List(ctx, &list); err != nil {
		return err
	}
	for i := range list.Items {
		m := &list.Items[i]
		st := &m.Status
		if m.DeletionTimestamp != nil || st.Phase == kubevirtv1.MigrationSucceeded || st.Phase == kubevirtv1.MigrationFailed {
			continue
		}
		vmi := &kubevirtv1.VirtualMachineInstance{}
		failed := func(reason string) error {
			st.Phase = kubevirtv1.MigrationFailed
			if st.MigrationState == nil {
				st.MigrationState = &kubevirtv1.VirtualMachineInstanceMigrationState{}
			}
			st.MigrationState.Failed, st.MigrationState.FailureReason = true, reason
			st.MigrationState.EndTimestamp = ptr(metav1.Now())
			return p.Client.Status().Update(ctx, m)
		}
		if err := p.Client.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: m.Spec.VMIName}, vmi); err != nil || vmi.Status.Phase != kubevirtv1.Running {
			p.fail(failed("VMI is not running"))
			continue
		}
		now := metav1.Now()
		switch st.Phase {
		case "", kubevirtv1.MigrationPending:
			// KubeVirt refuses non-shared volumes.
			if c := p.nonShared(ctx, vmi); c != "" {
				p.fail(failed(fmt.Sprintf("cannot migrate VMI: PVC %s is not shared, live migration requires that all PVCs must be shared (using ReadWriteMany access mode)", c)))
				continue
			}
			if st.Phase == "" {
				st.Phase = kubevirtv1.MigrationPending
			} else {
				st.Phase = kubevirtv1.MigrationScheduling
			}
		case kubevirtv1.MigrationScheduling:
			st.Phase = kubevirtv1.MigrationRunning
			target := p.o.Nodes[0]
			for _, n := range p.o.Nodes {
				if n != vmi.Status.NodeName {
					target = n
					break
				}
			}
			st.MigrationState = &kubevirtv1.VirtualMachineInstanceMigrationState{
				SourceNode: vmi.Status.NodeName, TargetNode: target, StartTimestamp: ptr(now),
				MigrationUID: m.UID, SourcePod: "virt-launcher-" + vmi.Name + "-src", TargetPod: "virt-launcher-" + vmi.Name + "-dst",
			}
		case kubevirtv1.MigrationRunning:
			// Memory copied: the domain moves.
			time.Sleep(50 * time.Millisecond)
			end := metav1.Now()
			st.Phase = kubevirtv1.MigrationSucceeded
			st.MigrationState.EndTimestamp, st.MigrationState.Completed = ptr(end), true
			vmi.Status.NodeName = st.MigrationState.TargetNode
			vmi.Status.MigrationState = st.MigrationState.DeepCopy()
			if err := p.Client.Update(ctx, vmi); err != nil {
				return err
			}
		}
		st.PhaseTransitionTimestamps = append(st.PhaseTransitionTimestamps, kubevirtv1.VirtualMachineInstanceMigrationPhaseTransitionTimestamp{Phase: st.Phase, PhaseTransitionTimestamp: now})
		p.fail(p.Client.Status().Update(ctx, m))
	}
	return nil
}

// nonShared names a claim of the instance that is not ReadWriteMany.
func (p *Peer) nonShared(ctx context.Context, vmi *kubevirtv1.VirtualMachineInstance) string {
	for _, v := range vmi.Spec.Volumes {
		c := claimOf(v)
		if c == "" {
			continue
		}
		pvc := &corev1.PersistentVolumeClaim{}
		if err := p.Client.Get(ctx, types.NamespacedName{Namespace: vmi.Namespace, Name: c}, pvc); err == nil && !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteMany) {
			return c
		}
	}
	return ""
}

// ---- exports ----

func (p *Peer) reconcileExports(ctx context.Context) error {
	var list exportv1.VirtualMachineExportList
	if err := p.Client.List(ctx, &list); err != nil {
		return err
	}
	for i := range list.Items {
		e := &list.Items[i]
		if e.DeletionTimestamp != nil || (e.Status != nil && e.Status.Phase == exportv1.Ready) {
			continue
		}
		pending := func(reason, msg string) {
			if e.Status != nil && e.Status.Phase == exportv1.Pending && len(e.Status.Conditions) > 0 && e.Status.Conditions[0].Message == msg {
				return
			}
			e.Status = &exportv1.VirtualMachineExportStatus{Phase: exportv1.Pending,
				Conditions: []exportv1.Condition{{Type: exportv1.ConditionReady, Status: corev1.ConditionFalse, Reason: reason, Message: msg}}}
			p.fail(p.Client.Status().Update(ctx, e))
		}
		data := map[string][]byte{} // exported volume (claim) name → bytes
		src := e.Spec.Source
		switch src.Kind {
		case "VirtualMachine":
			vm := &kubevirtv1.VirtualMachine{}
			if err := p.Client.Get(ctx, types.NamespacedName{Namespace: e.Namespace, Name: src.Name}, vm); err != nil {
				pending("VMNotFound", "Virtual Machine "+src.Name+" not found")
				continue
			}
			if err := p.Client.Get(ctx, types.NamespacedName{Namespace: e.Namespace, Name: src.Name}, &kubevirtv1.VirtualMachineInstance{}); err == nil {
				pending("inUse", fmt.Sprintf("Virtual Machine %s/%s is running", e.Namespace, src.Name))
				continue
			}
			for _, v := range vm.Spec.Template.Spec.Volumes {
				if c := claimOf(v); c != "" {
					data[c] = p.Disk(e.Namespace, c)
				}
			}
		case "VirtualMachineSnapshot":
			sk := key(e.Namespace, src.Name)
			p.mu.Lock()
			sd, sc := p.snapDisks[sk], p.snapClaims[sk]
			p.mu.Unlock()
			s := &snapshotv1.VirtualMachineSnapshot{}
			if err := p.Client.Get(ctx, types.NamespacedName{Namespace: e.Namespace, Name: src.Name}, s); err != nil || s.Status == nil || s.Status.ReadyToUse == nil || !*s.Status.ReadyToUse {
				pending("NotReady", "VirtualMachineSnapshot "+src.Name+" is not ready")
				continue
			}
			// Volumes carry the source claims' names (KubeVirt trims the
			// restore PVCs' export-name prefix).
			for vol, claim := range sc {
				data[claim] = slices.Clone(sd[vol])
			}
		case "PersistentVolumeClaim":
			if err := p.Client.Get(ctx, types.NamespacedName{Namespace: e.Namespace, Name: src.Name}, &corev1.PersistentVolumeClaim{}); err != nil {
				pending("PVCNotFound", "PersistentVolumeClaim "+src.Name+" not found")
				continue
			}
			data[src.Name] = p.Disk(e.Namespace, src.Name)
		default:
			e.Status = &exportv1.VirtualMachineExportStatus{Phase: exportv1.Skipped}
			p.fail(p.Client.Status().Update(ctx, e))
			continue
		}
		tokenRef := e.Spec.TokenSecretRef
		if tokenRef == nil {
			tokenRef = ptr("export-token-" + e.Name)
			sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: *tokenRef, Namespace: e.Namespace,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "export.kubevirt.io/v1beta1", Kind: "VirtualMachineExport", Name: e.Name, UID: e.UID}}},
				StringData: map[string]string{"token": randomToken()}}
			if err := p.Client.Create(ctx, sec); err != nil && !apierrors.IsAlreadyExists(err) {
				return err
			}
		}
		p.mu.Lock()
		p.exportData[key(e.Namespace, e.Name)] = data
		p.mu.Unlock()
		ext := &exportv1.VirtualMachineExportLink{Cert: string(p.CA.CertPEM)}
		in := &exportv1.VirtualMachineExportLink{Cert: string(p.CA.CertPEM)}
		for _, claim := range slices.Sorted(mapsKeys(data)) {
			base := fmt.Sprintf("%s/api/export.kubevirt.io/v1beta1/namespaces/%s/virtualmachineexports/%s/volumes/%s", p.ExportURL, e.Namespace, e.Name, claim)
			ext.Volumes = append(ext.Volumes, exportv1.VirtualMachineExportVolume{Name: claim, Formats: []exportv1.VirtualMachineExportVolumeFormat{
				{Format: exportv1.KubeVirtRaw, Url: base + "/disk.img"}, {Format: exportv1.KubeVirtGz, Url: base + "/disk.img.gz"}}})
			ibase := fmt.Sprintf("https://virt-export-%s.%s.svc/volumes/%s", e.Name, e.Namespace, claim)
			in.Volumes = append(in.Volumes, exportv1.VirtualMachineExportVolume{Name: claim, Formats: []exportv1.VirtualMachineExportVolumeFormat{
				{Format: exportv1.KubeVirtRaw, Url: ibase + "/disk.img"}, {Format: exportv1.KubeVirtGz, Url: ibase + "/disk.img.gz"}}})
		}
		e.Status = &exportv1.VirtualMachineExportStatus{
			Phase: exportv1.Ready, TokenSecretRef: tokenRef, ServiceName: "virt-export-" + e.Name,
			Links:      &exportv1.VirtualMachineExportLinks{External: ext, Internal: in},
			Conditions: []exportv1.Condition{{Type: exportv1.ConditionReady, Status: corev1.ConditionTrue, Reason: "PodReady"}},
		}
		p.fail(p.Client.Status().Update(ctx, e))
	}
	return nil
}
