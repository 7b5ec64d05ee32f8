// Package kubevirt is a test peer that plays KubeVirt's controllers (and
// the bits of CDI behind VM disks) against a real kube-apiserver
// (internal/testpeer/kube), through the real API and the real CRD
// schemas:
//
//   - virt-controller: VirtualMachine → VirtualMachineInstance per run
//     strategy, VMI phases Scheduling/Scheduled/Running with node, IPs and
//     the Ready condition, VM printableStatus/ready/created, the VM's
//     dataVolumeTemplates turned into DataVolumes;
//   - CDI for those DataVolumes: a PVC rendered like the StorageProfile
//     (Block, ReadWriteMany by default), phase Succeeded, contents cloned
//     from the golden image's PVC or blank;
//   - snapshots (InProgress → Succeeded, readyToUse, Online/NoGuestAgent
//     indications, contents frozen), restores (refused while the VM runs,
//     new claims restore-UID-VOLUME, completion), migrations (Pending →
//     Scheduling → Running → Succeeded with source/target nodes and
//     timestamps; Failed for a ReadWriteOnce volume, as KubeVirt does);
//   - virt-exportproxy: VirtualMachineExport status (phase, token Secret,
//     internal and external links, CA) and a loopback HTTPS server that
//     serves the exported volumes raw (with Range, like the real
//     http.ServeContent) and gzip, checking x-kubevirt-export-token;
//   - virt-api's subresource API (start/stop/restart), optional
//     (ServeSubresources), aggregated through the real apiserver;
//   - the garbage collector for the owners involved (envtest runs none).
//
// Volume contents live in memory, keyed by namespace/claim.
package kubevirt

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	kubevirtv1 "kubevirt.io/api/core/v1"
	exportv1 "kubevirt.io/api/export/v1beta1"
	snapshotv1 "kubevirt.io/api/snapshot/v1beta1"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hikube/ferry/internal/testpeer/kube"
)

// Options configure the peer.
type Options struct {
	// Nodes VMIs are scheduled on and migrate between (default node-a,
	// node-b, node-c: Hikube's three datacenters).
	Nodes []string
	// Tick is the reconcile interval (default 20 ms).
	Tick time.Duration
	// BlankSize is the content length of blank disks (default 1 MiB).
	BlankSize int
}

// ExportFault breaks export downloads for the next Times GET requests
// (Times < 0: all): each is cut after CutAfter body bytes (a dropped
// connection: a client resuming makes progress), or, with BreakAt > 0,
// when it reaches byte BreakAt of the volume (a failing volume: no
// request gets past it).
type ExportFault struct {
	CutAfter int64
	BreakAt  int64
	Times    int
}

// Peer is the running fake.
type Peer struct {
	Client  client.Client // admin, with the KubeVirt/CDI scheme
	Scheme  *runtime.Scheme
	CA      *kube.CA
	cluster *kube.Cluster
	o       Options

	ExportURL string // https://127.0.0.1:PORT

	mu            sync.Mutex
	disks         map[string][]byte            // ns/claim
	snapDisks     map[string]map[string][]byte // ns/snapshot → volume → data
	snapClaims    map[string]map[string]string // ns/snapshot → volume → claim
	snapSpecs     map[string]*kubevirtv1.VirtualMachineSpec
	exportData    map[string]map[string][]byte // ns/export → volume → data
	neverReady    map[string]string            // ns/vm → message
	failSnapshots bool
	fault         ExportFault
	requests      map[string]int // path → GETs
	subCalls      []string

	servers []*http.Server
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	errs    []error
}

// Start starts the peer; Stop stops it.
func Start(ctx context.Context, cluster *kube.Cluster, o Options) (*Peer, error) {
	if len(o.Nodes) == 0 {
		o.Nodes = []string{"node-a", "node-b", "node-c"}
	}
	if o.Tick <= 0 {
		o.Tick = 20 * time.Millisecond
	}
	if o.BlankSize <= 0 {
		o.BlankSize = 1 << 20
	}
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(cdiv1.AddToScheme(s))
	utilruntime.Must(kubevirtv1.AddToScheme(s))
	utilruntime.Must(snapshotv1.AddToScheme(s))
	utilruntime.Must(exportv1.AddToScheme(s))
	c, err := client.New(cluster.Admin, client.Options{Scheme: s})
	if err != nil {
		return nil, err
	}
	ca, err := kube.NewCA("kubevirt-export-ca")
	if err != nil {
		return nil, err
	}
	p := &Peer{
		Client: c, Scheme: s, CA: ca, cluster: cluster, o: o,
		disks: map[string][]byte{}, snapDisks: map[string]map[string][]byte{}, snapClaims: map[string]map[string]string{},
		snapSpecs: map[string]*kubevirtv1.VirtualMachineSpec{}, exportData: map[string]map[string][]byte{},
		neverReady: map[string]string{}, requests: map[string]int{},
	}
	if err := p.startExportServer(); err != nil {
		return nil, err
	}
	ctx, p.cancel = context.WithCancel(context.WithoutCancel(ctx))
	p.wg.Add(1)
	go p.run(ctx)
	return p, nil
}

// Stop stops the loop and the servers.
func (p *Peer) Stop() {
	p.cancel()
	p.wg.Wait()
	for _, s := range p.servers {
		s.Close()
	}
}

// Errors returns reconcile errors seen so far (a test may assert none).
func (p *Peer) Errors() []error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.errs)
}

func key(ns, name string) string { return ns + "/" + name }

// SetDisk sets the contents of claim ns/name.
func (p *Peer) SetDisk(ns, name string, data []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.disks[key(ns, name)] = slices.Clone(data)
}

// Disk returns the contents of claim ns/name (nil when unknown).
func (p *Peer) Disk(ns, name string) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.disks[key(ns, name)])
}

// NeverReady keeps the VM's instance from being scheduled (as with no
// node having room), with message as the scheduler's reason.
func (p *Peer) NeverReady(ns, vm, message string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.neverReady[key(ns, vm)] = message
}

// FailSnapshots makes new snapshots fail.
func (p *Peer) FailSnapshots(fail bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failSnapshots = fail
}

// SetExportFault sets the download fault (zero value: none).
func (p *Peer) SetExportFault(f ExportFault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault = f
}

// ExportRequests is how many GETs reached the export server (all paths).
func (p *Peer) ExportRequests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, v := range p.requests {
		n += v
	}
	return n
}

// SubresourceCalls lists the subresource API calls served ("start ns/vm").
func (p *Peer) SubresourceCalls() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.subCalls)
}

// ImportedDisk creates a DataVolume as `ferry import` leaves it: upload
// source, phase Succeeded, its PVC (access mode as given, Block) and
// contents.
func (p *Peer) ImportedDisk(ctx context.Context, ns, name string, data []byte, mode corev1.PersistentVolumeAccessMode) error {
	size := resource.MustParse("64Mi")
	dv := &cdiv1.DataVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: cdiv1.DataVolumeSpec{
			Source: &cdiv1.DataVolumeSource{Upload: &cdiv1.DataVolumeSourceUpload{}},
			Storage: &cdiv1.StorageSpec{
				AccessModes: []corev1.PersistentVolumeAccessMode{mode}, VolumeMode: ptr(corev1.PersistentVolumeBlock),
				StorageClassName: ptr("replicated"),
				Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
			},
		},
	}
	if err := p.Client.Create(ctx, dv); err != nil {
		return err
	}
	if err := p.ensurePVC(ctx, dv); err != nil {
		return err
	}
	p.SetDisk(ns, name, data)
	return p.setDVSucceeded(ctx, dv)
}

// GoldenImage creates a DataSource NAME pointing at a PVC NAME (with the
// given contents), as a golden image is published.
func (p *Peer) GoldenImage(ctx context.Context, ns, name string, data []byte) error {
	if err := p.ImportedDisk(ctx, ns, name, data, corev1.ReadWriteMany); err != nil {
		return err
	}
	ds := &cdiv1.DataSource{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       cdiv1.DataSourceSpec{Source: cdiv1.DataSourceSource{PVC: &cdiv1.DataVolumeSourcePVC{Namespace: ns, Name: name}}},
	}
	return p.Client.Create(ctx, ds)
}

func ptr[T any](v T) *T { return &v }

func (p *Peer) fail(err error) {
	if err == nil || apierrors.IsConflict(err) || apierrors.IsNotFound(err) || errors.Is(err, context.Canceled) {
		return
	}
	p.mu.Lock()
	p.errs = append(p.errs, err)
	p.mu.Unlock()
}

func (p *Peer) run(ctx context.Context) {
	defer p.wg.Done()
	t := time.NewTicker(p.o.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.reconcile(ctx)
	}
}

func (p *Peer) reconcile(ctx context.Context) {
	var vms kubevirtv1.VirtualMachineList
	var vmis kubevirtv1.VirtualMachineInstanceList
	var dvs cdiv1.DataVolumeList
	if err := p.Client.List(ctx, &vms); err != nil {
		p.fail(err)
		return
	}
	if err := p.Client.List(ctx, &vmis); err != nil {
		p.fail(err)
		return
	}
	if err := p.Client.List(ctx, &dvs); err != nil {
		p.fail(err)
		return
	}
	p.gc(ctx, &vms, &dvs)
	vmiBy := map[string]*kubevirtv1.VirtualMachineInstance{}
	for i := range vmis.Items {
		vmiBy[key(vmis.Items[i].Namespace, vmis.Items[i].Name)] = &vmis.Items[i]
	}
	dvBy := map[string]*cdiv1.DataVolume{}
	for i := range dvs.Items {
		dvBy[key(dvs.Items[i].Namespace, dvs.Items[i].Name)] = &dvs.Items[i]
	}
	for i := range dvs.Items {
		p.fail(p.reconcileDV(ctx, &dvs.Items[i]))
	}
	for i := range vms.Items {
		vm := &vms.Items[i]
		if vm.DeletionTimestamp != nil {
			continue
		}
		p.fail(p.reconcileVM(ctx, vm, vmiBy[key(vm.Namespace, vm.Name)], dvBy))
	}
	p.fail(p.reconcileSnapshots(ctx))
	p.fail(p.reconcileRestores(ctx))
	p.fail(p.reconcileMigrations(ctx))
	p.fail(p.reconcileExports(ctx))
}

// gc deletes dependents whose owner (VM, DataVolume, export) is gone.
func (p *Peer) gc(ctx context.Context, vms *kubevirtv1.VirtualMachineList, dvs *cdiv1.DataVolumeList) {
	alive := map[types.UID]bool{}
	for _, v := range vms.Items {
		alive[v.UID] = true
	}
	for _, d := range dvs.Items {
		alive[d.UID] = true
	}
	var exports exportv1.VirtualMachineExportList
	if err := p.Client.List(ctx, &exports); err == nil {
		for _, e := range exports.Items {
			alive[e.UID] = true
		}
	}
	orphan := func(o metav1.Object) bool {
		for _, r := range o.GetOwnerReferences() {
			var owner client.Object
			switch r.Kind {
			case "VirtualMachine":
				owner = &kubevirtv1.VirtualMachine{}
			case "DataVolume":
				owner = &cdiv1.DataVolume{}
			case "VirtualMachineExport":
				owner = &exportv1.VirtualMachineExport{}
			default:
				continue
			}
			if alive[r.UID] {
				continue
			}
			// Created after the lists above? Ask, as the real collector does.
			err := p.Client.Get(ctx, types.NamespacedName{Namespace: o.GetNamespace(), Name: r.Name}, owner)
			if apierrors.IsNotFound(err) || (err == nil && owner.GetUID() != r.UID) {
				return true
			}
		}
		return false
	}
	lists := []client.ObjectList{&kubevirtv1.VirtualMachineInstanceList{}, &cdiv1.DataVolumeList{}, &corev1.PersistentVolumeClaimList{}, &corev1.SecretList{}}
	for _, l := range lists {
		if err := p.Client.List(ctx, l); err != nil {
			continue
		}
		items, _ := metaItems(l)
		for _, o := range items {
			if o.GetDeletionTimestamp() == nil && orphan(o) {
				p.fail(client.IgnoreNotFound(p.Client.Delete(ctx, o, client.PropagationPolicy(metav1.DeletePropagationBackground))))
				if _, ok := o.(*corev1.PersistentVolumeClaim); ok {
					p.mu.Lock()
					delete(p.disks, key(o.GetNamespace(), o.GetName()))
					p.mu.Unlock()
				}
			}
		}
	}
}

func metaItems(l client.ObjectList) ([]client.Object, error) {
	var out []client.Object
	switch l := l.(type) {
	case *kubevirtv1.VirtualMachineInstanceList:
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
	case *cdiv1.DataVolumeList:
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
	case *corev1.PersistentVolumeClaimList:
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
	case *corev1.SecretList:
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
	default:
		return nil, fmt.Errorf("list %T", l)
	}
	return out, nil
}

// ---- DataVolumes (CDI, for VM template disks) ----

func ownedBy(o metav1.Object, kind string) *metav1.OwnerReference {
	for _, r := range o.GetOwnerReferences() {
		if r.Kind == kind {
			return &r
		}
	}
	return nil
}

func (p *Peer) reconcileDV(ctx context.Context, dv *cdiv1.DataVolume) error {
	if dv.DeletionTimestamp != nil || dv.Status.Phase == cdiv1.Succeeded {
		return nil
	}
	// Only DataVolumes this peer's VMs (or restores) own; CDI's own test
	// peer handles the rest (uploads).
	if ownedBy(dv, "VirtualMachine") == nil && dv.Labels["ferry-test/restored"] == "" {
		return nil
	}
	if err := p.ensurePVC(ctx, dv); err != nil {
		return err
	}
	k := key(dv.Namespace, dv.Name)
	p.mu.Lock()
	if _, ok := p.disks[k]; !ok {
		switch {
		case dv.Spec.SourceRef != nil:
			src := p.dataSourceClaim(ctx, dv)
			p.disks[k] = slices.Clone(p.disks[src])
		case dv.Spec.Source != nil && dv.Spec.Source.PVC != nil:
			p.disks[k] = slices.Clone(p.disks[key(dv.Spec.Source.PVC.Namespace, dv.Spec.Source.PVC.Name)])
		default:
			p.disks[k] = make([]byte, p.o.BlankSize)
		}
	}
	p.mu.Unlock()
	return p.setDVSucceeded(ctx, dv)
}

// dataSourceClaim resolves a sourceRef to the golden image's ns/claim.
// Called with p.mu held; reads the API.
func (p *Peer) dataSourceClaim(ctx context.Context, dv *cdiv1.DataVolume) string {
	ns := dv.Namespace
	if dv.Spec.SourceRef.Namespace != nil {
		ns = *dv.Spec.SourceRef.Namespace
	}
	ds := &cdiv1.DataSource{}
	if err := p.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: dv.Spec.SourceRef.Name}, ds); err != nil || ds.Spec.Source.PVC == nil {
		return ""
	}
	return key(ds.Spec.Source.PVC.Namespace, ds.Spec.Source.PVC.Name)
}

func (p *Peer) ensurePVC(ctx context.Context, dv *cdiv1.DataVolume) error {
	spec := corev1.PersistentVolumeClaimSpec{}
	switch {
	case dv.Spec.PVC != nil:
		spec = *dv.Spec.PVC.DeepCopy()
	case dv.Spec.Storage != nil:
		s := dv.Spec.Storage
		spec.AccessModes, spec.VolumeMode, spec.StorageClassName = s.AccessModes, s.VolumeMode, s.StorageClassName
		spec.Resources.Requests = s.Resources.Requests
	}
	// The StorageProfile of Hikube's replicated class: Block, RWX.
	if len(spec.AccessModes) == 0 {
		spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany}
	}
	if spec.VolumeMode == nil {
		spec.VolumeMode = ptr(corev1.PersistentVolumeBlock)
	}
	if _, ok := spec.Resources.Requests[corev1.ResourceStorage]; !ok {
		spec.Resources.Requests = corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Gi")}
	}
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: dv.Name, Namespace: dv.Namespace, OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "cdi.kubevirt.io/v1beta1", Kind: "DataVolume", Name: dv.Name, UID: dv.UID, Controller: ptr(true),
		}}},
		Spec: spec,
	}
	if err := p.Client.Create(ctx, pvc); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	// No PV controller here: report the claim bound as CDI would see it.
	pvc.Status = corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound, AccessModes: spec.AccessModes,
		Capacity: corev1.ResourceList{corev1.ResourceStorage: spec.Resources.Requests[corev1.ResourceStorage]}}
	if err := p.Client.Status().Update(ctx, pvc); err != nil && !apierrors.IsConflict(err) {
		return client.IgnoreNotFound(err)
	}
	return nil
}

func (p *Peer) setDVSucceeded(ctx context.Context, dv *cdiv1.DataVolume) error {
	cur := &cdiv1.DataVolume{}
	if err := p.Client.Get(ctx, client.ObjectKeyFromObject(dv), cur); err != nil {
		return err
	}
	cur.Status.Phase = cdiv1.Succeeded
	cur.Status.Progress = "100.0%"
	cur.Status.ClaimName = cur.Name
	cur.Status.Conditions = []cdiv1.DataVolumeCondition{
		{Type: cdiv1.DataVolumeBound, Status: corev1.ConditionTrue, Reason: "Bound"},
		{Type: cdiv1.DataVolumeReady, Status: corev1.ConditionTrue},
	}
	return p.Client.Status().Update(ctx, cur)
}

// ---- VirtualMachines and instances (virt-controller) ----

func claimOf(v kubevirtv1.Volume) string {
	switch {
	case v.DataVolume != nil:
		return v.DataVolume.Name
	case v.PersistentVolumeClaim != nil:
		return v.PersistentVolumeClaim.ClaimName
	}
	return ""
}

func (p *Peer) reconcileVM(ctx context.Context, vm *kubevirtv1.VirtualMachine, vmi *kubevirtv1.VirtualMachineInstance, dvs map[string]*cdiv1.DataVolume) error {
	for _, t := range vm.Spec.DataVolumeTemplates {
		if _, ok := dvs[key(vm.Namespace, t.Name)]; ok {
			continue
		}
		dv := &cdiv1.DataVolume{
			ObjectMeta: metav1.ObjectMeta{Name: t.Name, Namespace: vm.Namespace, Labels: t.Labels, Annotations: t.Annotations,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "kubevirt.io/v1", Kind: "VirtualMachine", Name: vm.Name, UID: vm.UID, Controller: ptr(true), BlockOwnerDeletion: ptr(true)}}},
			Spec: *t.Spec.DeepCopy(),
		}
		if err := p.Client.Create(ctx, dv); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("vm %s: create DataVolume %s: %w", vm.Name, t.Name, err)
		}
	}
	rs, _ := vm.RunStrategy()
	want := rs == kubevirtv1.RunStrategyAlways || rs == kubevirtv1.RunStrategyRerunOnFailure
	if rs == kubevirtv1.RunStrategyManual || rs == kubevirtv1.RunStrategyOnce {
		want = vmi != nil
	}
	printable := kubevirtv1.VirtualMachineStatusStopped
	provisioning := false
	if vm.Spec.Template != nil {
		for _, v := range vm.Spec.Template.Spec.Volumes {
			c := claimOf(v)
			if c == "" {
				continue
			}
			if dv, ok := dvs[key(vm.Namespace, c)]; ok {
				if dv.Status.Phase != cdiv1.Succeeded {
					provisioning = true
				}
				continue
			}
			if err := p.Client.Get(ctx, types.NamespacedName{Namespace: vm.Namespace, Name: c}, &corev1.PersistentVolumeClaim{}); err != nil {
				provisioning = true
			}
		}
	}
	switch {
	case want && vmi == nil && provisioning:
		printable = kubevirtv1.VirtualMachineStatusProvisioning
	case want && vmi == nil:
		vmi = &kubevirtv1.VirtualMachineInstance{
			ObjectMeta: metav1.ObjectMeta{Name: vm.Name, Namespace: vm.Namespace, Labels: vm.Spec.Template.ObjectMeta.Labels,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "kubevirt.io/v1", Kind: "VirtualMachine", Name: vm.Name, UID: vm.UID, Controller: ptr(true), BlockOwnerDeletion: ptr(true)}}},
			Spec:   *vm.Spec.Template.Spec.DeepCopy(),
			Status: kubevirtv1.VirtualMachineInstanceStatus{Phase: kubevirtv1.Pending},
		}
		if err := p.Client.Create(ctx, vmi); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("vm %s: create VirtualMachineInstance: %w", vm.Name, err)
		}
		printable = kubevirtv1.VirtualMachineStatusStarting
	case !want && vmi != nil:
		if vmi.DeletionTimestamp == nil {
			if err := p.Client.Delete(ctx, vmi); client.IgnoreNotFound(err) != nil {
				return err
			}
		}
		printable = kubevirtv1.VirtualMachineStatusStopping
	case vmi != nil:
		if err := p.progressVMI(ctx, vm, vmi); err != nil {
			return err
		}
		switch vmi.Status.Phase {
		case kubevirtv1.Running:
			printable = kubevirtv1.VirtualMachineStatusRunning
		case kubevirtv1.Scheduling, kubevirtv1.Pending:
			printable = kubevirtv1.VirtualMachineStatusStarting
			if p.neverReadyMsg(vm) != "" {
				printable = kubevirtv1.VirtualMachineStatusUnschedulable
			}
		default:
			printable = kubevirtv1.VirtualMachineStatusStarting
		}
	}
	ready := vmi != nil && vmi.Status.Phase == kubevirtv1.Running && isReady(vmi)
	st := vm.Status.DeepCopy()
	st.Created = vmi != nil
	st.Ready = ready
	st.PrintableStatus = printable
	st.RunStrategy = rs
	readyCond := corev1.ConditionFalse
	if ready {
		readyCond = corev1.ConditionTrue
	}
	st.Conditions = []kubevirtv1.VirtualMachineCondition{{Type: kubevirtv1.VirtualMachineReady, Status: readyCond}}
	if equalVMStatus(&vm.Status, st) {
		return nil
	}
	vm.Status = *st
	return p.Client.Status().Update(ctx, vm)
}

func equalVMStatus(a, b *kubevirtv1.VirtualMachineStatus) bool {
	if a.Created != b.Created || a.Ready != b.Ready || a.PrintableStatus != b.PrintableStatus || a.RunStrategy != b.RunStrategy || len(a.Conditions) != len(b.Conditions) {
		return false
	}
	for i := range a.Conditions {
		if a.Conditions[i].Type != b.Conditions[i].Type || a.Conditions[i].Status != b.Conditions[i].Status {
			return false
		}
	}
	return true
}

func isReady(vmi *kubevirtv1.VirtualMachineInstance) bool {
	for _, c := range vmi.Status.Conditions {
		if c.Type == kubevirtv1.VirtualMachineInstanceReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (p *Peer) neverReadyMsg(vm *kubevirtv1.VirtualMachine) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.neverReady[key(vm.Namespace, vm.Name)]
}

// progressVMI moves an instance one phase per tick: Pending → Scheduling
// → Scheduled (node) → Running (IPs, Ready).
func (p *Peer) progressVMI(ctx context.Context, vm *kubevirtv1.VirtualMachine, vmi *kubevirtv1.VirtualMachineInstance) error {
	if vmi.DeletionTimestamp != nil {
		return nil
	}
	st := &vmi.Status
	now := metav1.Now()
	switch st.Phase {
	case kubevirtv1.Pending, "":
		st.Phase = kubevirtv1.Scheduling
	case kubevirtv1.Scheduling:
		if msg := p.neverReadyMsg(vm); msg != "" {
			cond := kubevirtv1.VirtualMachineInstanceCondition{Type: kubevirtv1.VirtualMachineInstanceReady, Status: corev1.ConditionFalse, Reason: "Unschedulable", Message: msg}
			if len(st.Conditions) == 1 && st.Conditions[0].Message == msg {
				return nil
			}
			st.Conditions = []kubevirtv1.VirtualMachineInstanceCondition{cond}
			break
		}
		st.Phase = kubevirtv1.Scheduled
		st.NodeName = p.o.Nodes[int(hashName(vm.Name))%len(p.o.Nodes)]
	case kubevirtv1.Scheduled:
		st.Phase = kubevirtv1.Running
		ip := fmt.Sprintf("10.244.%d.%d", 1+hashName(vm.Namespace)%200, 2+hashName(vm.Name+string(vmi.UID))%250)
		st.Interfaces = []kubevirtv1.VirtualMachineInstanceNetworkInterface{{Name: "default", IP: ip, IPs: []string{ip}, InfoSource: "domain"}}
		st.Conditions = []kubevirtv1.VirtualMachineInstanceCondition{{Type: kubevirtv1.VirtualMachineInstanceReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}
		st.VolumeStatus = nil
		for _, v := range vmi.Spec.Volumes {
			st.VolumeStatus = append(st.VolumeStatus, kubevirtv1.VolumeStatus{Name: v.Name, Target: "", Phase: kubevirtv1.VolumeReady})
		}
	default:
		return nil
	}
	st.PhaseTransitionTimestamps = append(st.PhaseTransitionTimestamps, kubevirtv1.VirtualMachineInstancePhaseTransitionTimestamp{Phase: st.Phase, PhaseTransitionTimestamp: now})
	return p.Client.Update(ctx, vmi)
}

func hashName(s string) uint32 {
	var h uint32 = 2166136261
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return h
}

func randomToken() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// listen on loopback only.
func listen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
