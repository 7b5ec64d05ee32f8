package lifecycle_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hikube/ferry/internal/testpeer/kube"
	"github.com/hikube/ferry/internal/testpeer/kubevirt"
	"github.com/hikube/ferry/pkg/lifecycle"
)

// The package's tests share one control plane (etcd + kube-apiserver with
// the real KubeVirt/CDI CRDs) and one fake KubeVirt; each test uses its
// own VM names in the least-privilege user's namespace.
var env struct {
	once    sync.Once
	cluster *kube.Cluster
	kv      *kubevirt.Peer
	err     error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if env.kv != nil {
		env.kv.Stop()
	}
	if env.cluster != nil {
		env.cluster.Stop()
	}
	os.Exit(code)
}

// userRules: exactly the lifecycle commands' documented least privilege
// (ferry import's is kube.FerryRules; a real user holds both).
func userRules() []rbacv1.PolicyRule {
	return slices.Clone(lifecycle.UserRules)
}

// cluster starts (once) the control plane and the fake KubeVirt. A
// missing install fails under CI=true and skips otherwise.
func cluster(t *testing.T) (*kube.Cluster, *kubevirt.Peer) {
	t.Helper()
	env.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		env.cluster, env.err = kube.Start(ctx, kube.Options{Rules: userRules()})
		if env.err != nil {
			return
		}
		env.kv, env.err = kubevirt.Start(ctx, env.cluster, kubevirt.Options{})
	})
	if env.err != nil {
		if errors.Is(env.err, kube.ErrNotInstalled) && os.Getenv("CI") != "true" {
			t.Skipf("%v (install: %s)", env.err, kube.InstallHint)
		}
		t.Fatal(env.err)
	}
	t.Cleanup(func() {
		if errs := env.kv.Errors(); len(errs) > 0 {
			t.Errorf("fake KubeVirt errors: %v", errs)
		}
	})
	return env.cluster, env.kv
}

func scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(lifecycle.AddToScheme(s))
	return s
}

// userClient is ferry as the least-privilege user sees the cluster.
func userClient(t *testing.T, c *kube.Cluster) *lifecycle.Client {
	t.Helper()
	cfg, err := c.UserConfig()
	if err != nil {
		t.Fatal(err)
	}
	return clientFor(t, cfg, c.Namespace)
}

func clientFor(t *testing.T, cfg *rest.Config, ns string) *lifecycle.Client {
	t.Helper()
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 50, 100 // as pkg/kube sets
	k, err := client.New(cfg, client.Options{Scheme: scheme()})
	if err != nil {
		t.Fatal(err)
	}
	lc := &lifecycle.Client{Kube: k, Config: cfg, Namespace: ns, Poll: 25 * time.Millisecond}
	if err := lc.Validate(); err != nil {
		t.Fatal(err)
	}
	return lc
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// pattern is deterministic, non-zero disk content.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+int(seed)) ^ byte(i>>9)
	}
	return b
}

func mustContain(t *testing.T, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", subs)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("error %q lacks %q", err, s)
		}
	}
}

func admin(c *kube.Cluster) client.Client {
	k, err := client.New(c.Admin, client.Options{Scheme: scheme()})
	if err != nil {
		panic(fmt.Sprint(err))
	}
	return k
}
