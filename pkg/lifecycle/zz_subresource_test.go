package lifecycle_test

import (
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/hikube/ferry/pkg/lifecycle"
)

// Once the cluster serves KubeVirt's subresource API (virt-api, through
// the real aggregation layer and RBAC), power actions use it. This file
// sorts last: the API stays registered for the rest of the package.
func TestSubresourceAPI(t *testing.T) {
	c, kv := cluster(t)
	lc := userClient(t, c)
	ctx := ctxT(t, 2*time.Minute)
	ns := c.Namespace
	if err := kv.ServeSubresources(ctx); err != nil {
		t.Fatal(err)
	}
	if err := kv.ImportedDisk(ctx, ns, "sub-root", pattern(1<<16, 8), corev1.ReadWriteMany); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Create(ctx, lifecycle.CreateOptions{Name: "sub", Disk: &lifecycle.DiskRef{Kind: "dv", Name: "sub-root"}, RunStrategy: "Halted"}); err != nil {
		t.Fatal(err)
	}
	for _, a := range []lifecycle.Action{lifecycle.ActionStart, lifecycle.ActionRestart, lifecycle.ActionStop} {
		res, err := lc.Power(ctx, a, lifecycle.PowerOptions{Name: "sub", Wait: true, Timeout: time.Minute})
		if err != nil {
			t.Fatalf("%s: %v", a, err)
		}
		if res.Via != lifecycle.ViaSubresource {
			t.Fatalf("%s via %s", a, res.Via)
		}
	}
	want := []string{"start " + ns + "/sub", "restart " + ns + "/sub", "stop " + ns + "/sub"}
	if got := kv.SubresourceCalls(); !slices.Equal(got, want) {
		t.Fatalf("calls %v, want %v", got, want)
	}
}
