package cdi

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

const (
	annImmediate = "cdi.kubevirt.io/storage.bind.immediate.requested"
	// Cozystack's vm-disk chart marks optical disks.
	annOptical = "vm-disk.cozystack.io/optical"
)

// runDataVolumes plays CDI's DataVolume controller: a watch on all
// DataVolumes, reconciling each event.
func (p *Peer) runDataVolumes(ctx context.Context) {
	defer p.wg.Done()
	for ctx.Err() == nil {
		w, err := p.cluster.Client.Watch(ctx, &cdiv1.DataVolumeList{})
		if err != nil {
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		for ev := range w.ResultChan() {
			dv, ok := ev.Object.(*cdiv1.DataVolume)
			if !ok {
				continue
			}
			if ev.Type == watch.Deleted {
				p.mu.Lock()
				delete(p.volumes, dv.UID)
				p.mu.Unlock()
				continue
			}
			if ev.Type == watch.Added || ev.Type == watch.Modified {
				p.reconcile(ctx, dv)
			}
		}
		w.Stop()
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (p *Peer) reconcile(ctx context.Context, dv *cdiv1.DataVolume) {
	if dv.DeletionTimestamp != nil || dv.Spec.Source == nil {
		return
	}
	src := dv.Spec.Source
	if dv.Status.Phase != cdiv1.PhaseUnset && dv.Status.Phase != cdiv1.Pending {
		return
	}
	pvcSize, err := p.ensurePVC(ctx, dv)
	if err != nil {
		reason := "ErrClaimNotValid"
		if apierrors.IsForbidden(err) && strings.Contains(err.Error(), "exceeded quota") {
			reason = "ErrExceededQuota"
		}
		p.updateStatus(ctx, dv.Namespace, dv.Name, func(st *cdiv1.DataVolumeStatus) {
			st.Phase = cdiv1.Pending
			setCondition(st, cdiv1.DataVolumeBound, corev1.ConditionFalse, reason, err.Error())
			setCondition(st, cdiv1.DataVolumeReady, corev1.ConditionFalse, reason, err.Error())
		})
		return
	}
	wffc, err := p.waitsForConsumer(ctx, dv)
	if err != nil {
		return
	}
	if wffc {
		p.updateStatus(ctx, dv.Namespace, dv.Name, func(st *cdiv1.DataVolumeStatus) {
			st.Phase = cdiv1.WaitForFirstConsumer
			st.ClaimName = dv.Name
			setCondition(st, cdiv1.DataVolumeBound, corev1.ConditionFalse, "WaitForFirstConsumer", "PVC "+dv.Name+" Pending: waiting for first consumer to be created before binding")
		})
		return
	}
	switch {
	case src.Upload != nil:
		p.updateStatus(ctx, dv.Namespace, dv.Name, func(st *cdiv1.DataVolumeStatus) {
			st.Phase = cdiv1.UploadScheduled
			st.ClaimName = dv.Name
			st.Progress = "N/A"
			setCondition(st, cdiv1.DataVolumeBound, corev1.ConditionTrue, "Bound", "PVC "+dv.Name+" Bound")
		})
		// The upload pod starts.
		go func() {
			sleep(ctx, p.o.ReadyDelay)
			p.updateStatus(ctx, dv.Namespace, dv.Name, func(st *cdiv1.DataVolumeStatus) {
				if st.Phase == cdiv1.UploadScheduled {
					st.Phase = cdiv1.UploadReady
					setCondition(st, cdiv1.DataVolumeRunning, corev1.ConditionTrue, "Pod is running", "")
				}
			})
		}()
	case src.HTTP != nil:
		p.updateStatus(ctx, dv.Namespace, dv.Name, func(st *cdiv1.DataVolumeStatus) {
			st.Phase = cdiv1.ImportScheduled
			st.ClaimName = dv.Name
			setCondition(st, cdiv1.DataVolumeBound, corev1.ConditionTrue, "Bound", "PVC "+dv.Name+" Bound")
		})
		go p.importHTTP(ctx, dv.DeepCopy(), pvcSize)
	default:
		// Other sources (s3, registry, clone...) are accepted and stay
		// ImportScheduled: tests check their shape, not a transfer.
		p.updateStatus(ctx, dv.Namespace, dv.Name, func(st *cdiv1.DataVolumeStatus) {
			st.Phase = cdiv1.ImportScheduled
			st.ClaimName = dv.Name
		})
	}
}

// ensurePVC creates the DataVolume's PVC like CDI renders it: the storage
// API takes access and volume modes from the StorageProfile and inflates
// Filesystem volumes by the filesystem overhead. It returns the PVC size.
func (p *Peer) ensurePVC(ctx context.Context, dv *cdiv1.DataVolume) (int64, error) {
	spec := corev1.PersistentVolumeClaimSpec{}
	var size resource.Quantity
	switch {
	case dv.Spec.PVC != nil:
		spec = *dv.Spec.PVC.DeepCopy()
		size = spec.Resources.Requests[corev1.ResourceStorage]
	case dv.Spec.Storage != nil:
		s := dv.Spec.Storage
		spec.AccessModes = s.AccessModes
		spec.VolumeMode = s.VolumeMode
		spec.StorageClassName = s.StorageClassName
		spec.DataSource, spec.DataSourceRef, spec.Selector, spec.VolumeName = s.DataSource, s.DataSourceRef, s.Selector, s.VolumeName
		if spec.StorageClassName == nil {
			sc := p.o.StorageClass
			spec.StorageClassName = &sc
		}
		if len(spec.AccessModes) == 0 {
			spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany}
		}
		if spec.VolumeMode == nil {
			b := corev1.PersistentVolumeBlock
			spec.VolumeMode = &b
		}
		size = s.Resources.Requests[corev1.ResourceStorage]
		if *spec.VolumeMode == corev1.PersistentVolumeFilesystem {
			size = *resource.NewQuantity(requiredSpace(p.overhead(), size.Value()), resource.BinarySI)
		}
	default:
		return 0, fmt.Errorf("DataVolume %s has neither spec.pvc nor spec.storage", dv.Name)
	}
	if size.Value() < 1<<20 {
		return 0, fmt.Errorf("PVC Spec is not valid - storage size should be at least 1MiB")
	}
	spec.Resources.Requests = corev1.ResourceList{corev1.ResourceStorage: size}
	t := true
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name: dv.Name, Namespace: dv.Namespace,
			Labels:      map[string]string{"app": "containerized-data-importer", "app.kubernetes.io/component": "storage"},
			Annotations: map[string]string{"cdi.kubevirt.io/storage.contentType": string(dv.Spec.ContentType)},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "cdi.kubevirt.io/v1beta1", Kind: "DataVolume", Name: dv.Name, UID: dv.UID, Controller: &t, BlockOwnerDeletion: &t,
			}},
		},
		Spec: spec,
	}
	if dv.Spec.Source.Upload != nil {
		pvc.Annotations["cdi.kubevirt.io/storage.upload.target"] = ""
	}
	err := p.cluster.Client.Create(ctx, pvc)
	if apierrors.IsAlreadyExists(err) {
		old := &corev1.PersistentVolumeClaim{}
		if err := p.cluster.Client.Get(ctx, client.ObjectKeyFromObject(pvc), old); err != nil {
			return 0, err
		}
		if old.DeletionTimestamp == nil && len(old.OwnerReferences) > 0 && old.OwnerReferences[0].UID != dv.UID {
			// A leftover of a deleted DataVolume: there is no garbage
			// collector here, so do its job.
			p.cluster.Client.Delete(ctx, old)
			return 0, fmt.Errorf("PVC %s belongs to another DataVolume", pvc.Name)
		}
		q := old.Spec.Resources.Requests[corev1.ResourceStorage]
		return q.Value(), nil
	}
	return size.Value(), err
}

// waitsForConsumer: the claim's class binds on first consumer and the
// DataVolume did not ask for immediate binding.
func (p *Peer) waitsForConsumer(ctx context.Context, dv *cdiv1.DataVolume) (bool, error) {
	if _, ok := dv.Annotations[annImmediate]; ok {
		return false, nil
	}
	name := p.o.StorageClass
	if dv.Spec.Storage != nil && dv.Spec.Storage.StorageClassName != nil {
		name = *dv.Spec.Storage.StorageClassName
	} else if dv.Spec.PVC != nil && dv.Spec.PVC.StorageClassName != nil {
		name = *dv.Spec.PVC.StorageClassName
	}
	sc := &storagev1.StorageClass{}
	if err := p.cluster.Client.Get(ctx, client.ObjectKey{Name: name}, sc); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, err
	}
	return sc.VolumeBindingMode != nil && *sc.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer, nil
}

func (p *Peer) overhead() float64 {
	var f float64
	fmt.Sscanf(p.o.Overhead, "%g", &f)
	return f
}

// requiredSpace and usableSpace are CDI's util.GetRequiredSpace and
// GetUsableSpace (1 MiB alignment).
func requiredSpace(overhead float64, n int64) int64 {
	aligned := (n + 1<<20 - 1) &^ (1<<20 - 1)
	return int64(ceil(float64(aligned) * (1 + overhead)))
}

func usableSpace(overhead float64, n int64) int64 {
	return int64(ceil(float64(n)/(1+overhead))) &^ (1<<20 - 1)
}

func ceil(f float64) float64 {
	i := float64(int64(f))
	if f > i {
		return i + 1
	}
	return i
}

// importHTTP plays CDI's importer pod for source.http: fetch, verify the
// checksum, write. A failed import restarts the pod; CDI keeps the
// DataVolume ImportInProgress and counts restarts.
func (p *Peer) importHTTP(ctx context.Context, dv *cdiv1.DataVolume, pvcSize int64) {
	src := dv.Spec.Source.HTTP
	for attempt := 0; attempt < 3 && ctx.Err() == nil; attempt++ {
		p.updateStatus(ctx, dv.Namespace, dv.Name, func(st *cdiv1.DataVolumeStatus) {
			st.Phase = cdiv1.ImportInProgress
			st.Progress = "0.00%"
			setCondition(st, cdiv1.DataVolumeRunning, corev1.ConditionTrue, "Pod is running", "")
		})
		err := p.fetch(ctx, dv, src, pvcSize)
		if err == nil {
			p.updateStatus(ctx, dv.Namespace, dv.Name, func(st *cdiv1.DataVolumeStatus) {
				st.Phase = cdiv1.Succeeded
				st.Progress = "100.0%"
				setCondition(st, cdiv1.DataVolumeRunning, corev1.ConditionFalse, "Completed", "Import Complete")
				setCondition(st, cdiv1.DataVolumeReady, corev1.ConditionTrue, "", "")
			})
			return
		}
		p.updateStatus(ctx, dv.Namespace, dv.Name, func(st *cdiv1.DataVolumeStatus) {
			st.RestartCount++
			setCondition(st, cdiv1.DataVolumeRunning, corev1.ConditionFalse, "Error", "Unable to process data: "+err.Error())
		})
		sleep(ctx, 100*time.Millisecond)
	}
}

func (p *Peer) fetch(ctx context.Context, dv *cdiv1.DataVolume, src *cdiv1.DataVolumeSourceHTTP, pvcSize int64) error {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if src.CertConfigMap != "" {
		cm := &corev1.ConfigMap{}
		if err := p.cluster.Client.Get(ctx, client.ObjectKey{Namespace: dv.Namespace, Name: src.CertConfigMap}, cm); err != nil {
			return err
		}
		pool := x509.NewCertPool()
		for _, v := range cm.Data {
			pool.AppendCertsFromPEM([]byte(v))
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src.URL, nil)
	if err != nil {
		return err
	}
	for _, h := range src.ExtraHeaders {
		if k, v, ok := strings.Cut(h, ":"); ok {
			req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
		}
	}
	if src.SecretRef != "" {
		sec := &corev1.Secret{}
		if err := p.cluster.Client.Get(ctx, client.ObjectKey{Namespace: dv.Namespace, Name: src.SecretRef}, sec); err != nil {
			return err
		}
		req.SetBasicAuth(string(sec.Data["accessKeyId"]), string(sec.Data["secretKey"]))
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("expected status code 200, got %d. Status: %s", resp.StatusCode, resp.Status)
	}
	// The checksum covers the bytes as served (before any decompression).
	h := sha256.New()
	res, err := p.receive(dv.Namespace, dv.Name, io.TeeReader(resp.Body, h), pvcSize, volumeModeOf(dv))
	if err != nil {
		return err
	}
	if want, ok := strings.CutPrefix(src.Checksum, "sha256:"); ok {
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			os.Remove(res.Path)
			return fmt.Errorf("checksum mismatch: expected sha256:%s, got sha256:%s", want, got)
		}
	} else if src.Checksum != "" {
		return fmt.Errorf("unsupported checksum %q", src.Checksum)
	}
	res.Attempts = 1
	p.mu.Lock()
	p.uploads[dv.Namespace+"/"+dv.Name] = res
	p.mu.Unlock()
	return nil
}

func volumeModeOf(dv *cdiv1.DataVolume) corev1.PersistentVolumeMode {
	if dv.Spec.Storage != nil && dv.Spec.Storage.VolumeMode != nil {
		return *dv.Spec.Storage.VolumeMode
	}
	if dv.Spec.PVC != nil && dv.Spec.PVC.VolumeMode != nil {
		return *dv.Spec.PVC.VolumeMode
	}
	return corev1.PersistentVolumeBlock // the StorageProfile's choice
}

// runVMDisks plays Cozystack's vm-disk chart: a VMDisk NAME gets the
// DataVolume vm-disk-NAME (deleted with it: no garbage collector here).
func (p *Peer) runVMDisks(ctx context.Context) {
	defer p.wg.Done()
	for ctx.Err() == nil {
		list := &unstructured.UnstructuredList{}
		list.SetAPIVersion("apps.cozystack.io/v1alpha1")
		list.SetKind("VMDiskList")
		w, err := p.cluster.Client.Watch(ctx, list)
		if err != nil {
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		for ev := range w.ResultChan() {
			u, ok := ev.Object.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			name := "vm-disk-" + u.GetName()
			switch ev.Type {
			case watch.Deleted:
				dv := &cdiv1.DataVolume{ObjectMeta: metav1.ObjectMeta{Namespace: u.GetNamespace(), Name: name}}
				p.cluster.Client.Delete(ctx, dv)
			case watch.Added:
				p.vmDiskDataVolume(ctx, u, name)
			}
		}
		w.Stop()
	}
}

func (p *Peer) vmDiskDataVolume(ctx context.Context, u *unstructured.Unstructured, name string) {
	spec, _, _ := unstructured.NestedMap(u.Object, "spec")
	src := &cdiv1.DataVolumeSource{}
	ann := map[string]string{}
	switch s, _ := spec["source"].(map[string]any); {
	case s["upload"] != nil:
		src.Upload = &cdiv1.DataVolumeSourceUpload{}
		// An upload must bind before any VM consumes the disk.
		ann[annImmediate] = "true"
	case s["http"] != nil:
		url, _, _ := unstructured.NestedString(s, "http", "url")
		src.HTTP = &cdiv1.DataVolumeSourceHTTP{URL: url}
	default:
		src.Blank = &cdiv1.DataVolumeBlankImage{}
	}
	if opt, _ := spec["optical"].(bool); opt {
		ann[annOptical] = "true"
	}
	size := fmt.Sprint(spec["storage"])
	q, err := resource.ParseQuantity(size)
	if err != nil {
		q = resource.MustParse("5Gi")
	}
	sc, _ := spec["storageClass"].(string)
	dv := &cdiv1.DataVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: u.GetNamespace(), Annotations: ann,
			Labels:          map[string]string{"app.kubernetes.io/instance": u.GetName(), "apps.cozystack.io/application.kind": "VMDisk"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: u.GetAPIVersion(), Kind: u.GetKind(), Name: u.GetName(), UID: u.GetUID()}},
		},
		Spec: cdiv1.DataVolumeSpec{
			ContentType: cdiv1.DataVolumeKubeVirt,
			Source:      src,
			Storage: &cdiv1.StorageSpec{
				Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: q}},
			},
		},
	}
	if sc != "" {
		dv.Spec.Storage.StorageClassName = &sc
	}
	p.cluster.Client.Create(ctx, dv)
}

func (p *Peer) tmpPath(ns, name string) string {
	return filepath.Join(p.o.Dir, ns, "."+name+".partial")
}
