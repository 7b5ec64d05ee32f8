package cdi_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/hikube/ferry/internal/testpeer/cdi"
	"github.com/hikube/ferry/internal/testpeer/kube"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	uploadv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/upload/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

func TestMain(m *testing.M) { os.Exit(kube.Main(m)) }

// The least-privilege user gets a token through kube-apiserver's
// aggregation layer; a user without the RBAC grant does not.
func TestTokenThroughAggregation(t *testing.T) {
	c := kube.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := cdi.Start(ctx, c, cdi.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	cfg, err := c.UserConfig()
	if err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	uploadv1.AddToScheme(s)
	cdiv1.AddToScheme(s)
	uc, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		ns      string
		wantErr bool
	}{
		{c.Namespace, false},
		{"default", true}, // no grant there
	}
	for _, tt := range tests {
		req := &uploadv1.UploadTokenRequest{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: tt.ns}, Spec: uploadv1.UploadTokenRequestSpec{PvcName: "x"}}
		err := uc.Create(ctx, req)
		if (err != nil) != tt.wantErr {
			t.Fatalf("namespace %s: err = %v, want error %v", tt.ns, err, tt.wantErr)
		}
		if err == nil && req.Status.Token == "" {
			t.Fatalf("namespace %s: no token", tt.ns)
		}
	}
	if p.TokensIssued() != 1 {
		t.Fatalf("tokens issued = %d, want 1", p.TokensIssued())
	}
}
