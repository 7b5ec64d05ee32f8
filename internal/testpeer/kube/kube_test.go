package kube_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/hikube/ferry/internal/testpeer/kube"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

func TestMain(m *testing.M) { os.Exit(kube.Main(m)) }

// The cluster is real where it matters to ferry: RBAC denies what the
// user was not granted, and the extracted CRD schemas validate objects.
func TestCluster(t *testing.T) {
	c := kube.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, err := c.UserConfig()
	if err != nil {
		t.Fatal(err)
	}
	uc, err := client.New(cfg, client.Options{Scheme: c.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := uc.List(ctx, &corev1.SecretList{}); !apierrors.IsForbidden(err) {
		t.Errorf("user listed secrets cluster-wide: %v", err)
	}
	if err := uc.List(ctx, &corev1.PodList{}, client.InNamespace(c.Namespace)); !apierrors.IsForbidden(err) {
		t.Errorf("user listed pods: %v", err)
	}
	vm := func(spec map[string]any) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
			"metadata": map[string]any{"name": "vm", "namespace": c.Namespace},
			"spec":     spec,
		}}
	}
	template := map[string]any{"spec": map[string]any{"domain": map[string]any{"devices": map[string]any{}}}}
	tests := []struct {
		name  string
		spec  map[string]any
		valid bool
	}{
		{"ok", map[string]any{"runStrategy": "Always", "template": template}, true},
		{"no-template", map[string]any{"runStrategy": "Always"}, false},
		{"runStrategy-not-a-string", map[string]any{"runStrategy": int64(1), "template": template}, false},
	}
	for _, tt := range tests {
		err := c.Client.Create(ctx, vm(tt.spec), client.DryRunAll)
		if (err == nil) != tt.valid || (err != nil && !apierrors.IsInvalid(err)) {
			t.Errorf("%s: %v, want valid %v", tt.name, err, tt.valid)
		}
	}
	for _, kind := range []string{"DataVolume", "DataSource", "StorageProfile", "CDIConfig"} {
		u := &unstructured.UnstructuredList{}
		u.SetAPIVersion("cdi.kubevirt.io/v1beta1")
		u.SetKind(kind + "List")
		if err := c.Client.List(ctx, u); err != nil {
			t.Errorf("%s: %v", kind, err)
		}
	}
	for _, gvk := range [][2]string{{"apps.cozystack.io/v1alpha1", "VMDiskList"}, {"snapshot.kubevirt.io/v1beta1", "VirtualMachineSnapshotList"}, {"export.kubevirt.io/v1beta1", "VirtualMachineExportList"}} {
		u := &unstructured.UnstructuredList{}
		u.SetAPIVersion(gvk[0])
		u.SetKind(gvk[1])
		if err := c.Client.List(ctx, u); err != nil {
			t.Errorf("%s: %v", gvk[1], err)
		}
	}
}
