// Package kube runs a real Kubernetes control plane for tests: etcd and
// kube-apiserver (started by controller-runtime's envtest) with RBAC on,
// the real CDI and KubeVirt CRDs plus Cozystack's VMDisk/VMInstance, API
// aggregation wired (front-proxy certificates) so a test peer can serve an
// aggregated API such as CDI's upload.cdi.kubevirt.io, and a
// least-privilege ServiceAccount whose token kubeconfig is what the code
// under test gets. Nothing here plays a controller: that is the tests' (or
// internal/testpeer/cdi's) job through the admin client.
//
// The binaries and CRDs come from scripts/install-tools.sh. When they are
// missing a test fails under CI=true and is skipped otherwise, with the
// install command.
package kube

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"
)

//go:embed crds/cozystack-apps.yaml
var cozystackCRDs []byte

// ErrNotInstalled means the peer's binaries or CRDs are not in the tools
// directory.
var ErrNotInstalled = errors.New("kube test peer not installed")

// InstallHint is the command that installs what this peer needs.
const InstallHint = "run `make tools` (scripts/install-deps.sh --tools: etcd-server, kube-apiserver, CRDs)"

// ToolsDir is $FERRY_TOOLS or <repo>/.cache/tools, as in
// scripts/install-tools.sh.
func ToolsDir() string {
	if d := os.Getenv("FERRY_TOOLS"); d != "" {
		return d
	}
	dir, err := os.Getwd()
	if err != nil {
		return ".cache/tools"
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(b, []byte("module github.com/hikube/ferry\n")) {
			return filepath.Join(dir, ".cache", "tools")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ".cache/tools"
		}
		dir = parent
	}
}

// Options configure a cluster.
type Options struct {
	// Namespace is the least-privilege user's namespace (default
	// "ferry-test"); CDINamespace is where CDI is "installed" (default
	// "cdi").
	Namespace, CDINamespace string
	// Rules, ClusterRules and CDIRules are granted to the user in its
	// namespace, cluster-wide, and in the CDI namespace; nil means ferry's
	// documented least privilege (FerryRules...).
	Rules, ClusterRules, CDIRules []rbacv1.PolicyRule
	// Output receives the control plane's logs (nil: discarded, unless
	// KUBEBUILDER_ATTACH_CONTROL_PLANE_OUTPUT=true).
	Output io.Writer
}

// FerryRules is what ferry needs in the target namespace.
var FerryRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"cdi.kubevirt.io"}, Resources: []string{"datavolumes"}, Verbs: []string{"get", "list", "watch", "create", "delete", "patch", "update"}},
	{APIGroups: []string{"cdi.kubevirt.io"}, Resources: []string{"datasources"}, Verbs: []string{"get", "create", "update", "patch"}},
	{APIGroups: []string{"upload.cdi.kubevirt.io"}, Resources: []string{"uploadtokenrequests"}, Verbs: []string{"create"}},
	{APIGroups: []string{"apps.cozystack.io"}, Resources: []string{"vmdisks"}, Verbs: []string{"get", "list", "watch", "create", "delete", "patch"}},
	{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "create", "update"}},
}

// FerryClusterRules is what ferry reads cluster-wide (CDI's own
// cdi.kubevirt.io:config-reader grants the CDI part to everyone).
var FerryClusterRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"cdi.kubevirt.io"}, Resources: []string{"cdiconfigs", "storageprofiles"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{"storage.k8s.io"}, Resources: []string{"storageclasses"}, Verbs: []string{"get"}},
}

// FerryCDIRules lets ferry read the upload proxy's CA bundle.
var FerryCDIRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{"cdi-uploadproxy-signer-bundle"}, Verbs: []string{"get"}},
}

// Cluster is a running control plane.
type Cluster struct {
	// Admin is a system:masters client config; Client uses it with Scheme
	// (client-go + CDI types); Clientset too.
	Admin     *rest.Config
	Scheme    *runtime.Scheme
	Client    client.WithWatch
	Clientset kubernetes.Interface
	// Kubeconfig is a kubeconfig file for the least-privilege user
	// (ServiceAccount User in Namespace, bearer token), its current
	// context's namespace set to Namespace.
	Kubeconfig string
	Namespace  string
	// CDINamespace is where CDI objects (signer bundle, services) live.
	CDINamespace string
	// User is the user's name as RBAC sees it.
	User string
	// FrontProxyCA signs the client certificate kube-apiserver presents
	// to aggregated API servers.
	FrontProxyCA *CA
	// Dir holds the cluster's files.
	Dir string

	env *envtest.Environment
}

// Start starts etcd and kube-apiserver, installs the CRDs and creates the
// least-privilege user. It takes ~5-10 s.
func Start(ctx context.Context, o Options) (*Cluster, error) {
	tools := ToolsDir()
	bin := filepath.Join(tools, "bin")
	crdDir := filepath.Join(tools, "crds")
	for _, p := range []string{filepath.Join(bin, "kube-apiserver"), filepath.Join(bin, "etcd"), filepath.Join(crdDir, "cdi-datavolume.yaml")} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%w: %s missing: %s", ErrNotInstalled, p, InstallHint)
		}
	}
	if o.Namespace == "" {
		o.Namespace = "ferry-test"
	}
	if o.CDINamespace == "" {
		o.CDINamespace = "cdi"
	}
	if o.Rules == nil {
		o.Rules = FerryRules
	}
	if o.ClusterRules == nil {
		o.ClusterRules = FerryClusterRules
	}
	if o.CDIRules == nil {
		o.CDIRules = FerryCDIRules
	}
	dir, err := os.MkdirTemp("", "ferry-kube-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Namespace: o.Namespace, CDINamespace: o.CDINamespace, Dir: dir}
	if err := c.start(ctx, o, bin, crdDir); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start(ctx context.Context, o Options, bin, crdDir string) error {
	// Aggregation: kube-apiserver authenticates itself to extension API
	// servers with a front-proxy client certificate and passes the user in
	// X-Remote-* headers; the extension checks the certificate against
	// requestheader-client-ca-file (published in
	// kube-system/extension-apiserver-authentication).
	fp, err := NewCA("front-proxy-ca")
	if err != nil {
		return err
	}
	c.FrontProxyCA = fp
	fpCert, fpKey, err := fp.Issue("front-proxy-client")
	if err != nil {
		return err
	}
	files := map[string][]byte{"front-proxy-ca.crt": fp.CertPEM, "front-proxy-client.crt": fpCert, "front-proxy-client.key": fpKey}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(c.Dir, n), b, 0o600); err != nil {
			return err
		}
	}
	crds, err := parseCRDs(cozystackCRDs)
	if err != nil {
		return fmt.Errorf("cozystack CRDs: %w", err)
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    bin,
		CRDDirectoryPaths:        []string{crdDir},
		CRDs:                     crds,
		ErrorIfCRDPathMissing:    true,
		ControlPlaneStartTimeout: 60 * time.Second, // a loaded 2-core machine
		ControlPlaneStopTimeout:  20 * time.Second,
	}
	// envtest takes binaries from KUBEBUILDER_ASSETS before
	// BinaryAssetsDirectory; ours must win.
	env.ControlPlane.GetAPIServer().Path = filepath.Join(bin, "kube-apiserver")
	env.ControlPlane.Etcd = &envtest.Etcd{Path: filepath.Join(bin, "etcd")}
	if o.Output != nil {
		env.ControlPlane.GetAPIServer().Out, env.ControlPlane.GetAPIServer().Err = o.Output, o.Output
		env.ControlPlane.Etcd.Out, env.ControlPlane.Etcd.Err = o.Output, o.Output
	}
	args := env.ControlPlane.GetAPIServer().Configure()
	args.Set("requestheader-client-ca-file", filepath.Join(c.Dir, "front-proxy-ca.crt"))
	args.Set("requestheader-allowed-names", "front-proxy-client")
	args.Set("requestheader-username-headers", "X-Remote-User")
	args.Set("requestheader-group-headers", "X-Remote-Group")
	args.Set("requestheader-extra-headers-prefix", "X-Remote-Extra-")
	args.Set("proxy-client-cert-file", filepath.Join(c.Dir, "front-proxy-client.crt"))
	args.Set("proxy-client-key-file", filepath.Join(c.Dir, "front-proxy-client.key"))
	c.env = env
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("start kube-apiserver and etcd: %w", err)
	}
	c.Admin = cfg
	c.Scheme = runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(c.Scheme))
	utilruntime.Must(apiextensionsv1.AddToScheme(c.Scheme))
	utilruntime.Must(cdiv1.AddToScheme(c.Scheme))
	if c.Client, err = client.NewWithWatch(cfg, client.Options{Scheme: c.Scheme}); err != nil {
		return err
	}
	if c.Clientset, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	return c.createUser(ctx, o)
}

// parseCRDs splits a multi-document YAML into CRDs.
func parseCRDs(b []byte) ([]*apiextensionsv1.CustomResourceDefinition, error) {
	var out []*apiextensionsv1.CustomResourceDefinition
	for doc := range strings.SplitSeq(string(b), "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.UnmarshalStrict([]byte(doc), crd); err != nil {
			return nil, err
		}
		out = append(out, crd)
	}
	return out, nil
}

// createUser makes the ServiceAccount "ferry" in Namespace, binds it to
// the least-privilege roles and writes a kubeconfig with a token for it.
func (c *Cluster) createUser(ctx context.Context, o Options) error {
	cl := c.Client
	const sa = "ferry"
	c.User = "system:serviceaccount:" + c.Namespace + ":" + sa
	subject := []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: c.Namespace}}
	objs := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: c.Namespace}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: c.CDINamespace}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: c.Namespace}},
		&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "ferry", Namespace: c.Namespace}, Rules: o.Rules},
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "ferry", Namespace: c.Namespace}, Subjects: subject,
			RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "ferry"}},
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "ferry"}, Rules: o.ClusterRules},
		&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "ferry"}, Subjects: subject,
			RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "ferry"}},
		&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "ferry-cdi", Namespace: c.CDINamespace}, Rules: o.CDIRules},
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "ferry-cdi", Namespace: c.CDINamespace}, Subjects: subject,
			RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "ferry-cdi"}},
	}
	for _, obj := range objs {
		if err := cl.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %T %s: %w", obj, obj.GetName(), err)
		}
	}
	tok, err := c.Token(ctx, time.Hour)
	if err != nil {
		return err
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	return c.WriteKubeconfig(c.Kubeconfig, tok)
}

// Token issues a fresh ServiceAccount token for the user (TokenRequest
// API, like `kubectl create token`).
func (c *Cluster) Token(ctx context.Context, ttl time.Duration) (string, error) {
	secs := int64(ttl / time.Second)
	tr, err := c.Clientset.CoreV1().ServiceAccounts(c.Namespace).CreateToken(ctx, "ferry",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &secs}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for ferry: %w", err)
	}
	return tr.Status.Token, nil
}

// WriteKubeconfig writes a kubeconfig for the user with token to path,
// context "ferry-test", namespace Namespace.
func (c *Cluster) WriteKubeconfig(path, token string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: c.Admin.Host, CertificateAuthorityData: c.Admin.CAData}
	kc.AuthInfos["ferry"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["ferry-test"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "ferry", Namespace: c.Namespace}
	kc.CurrentContext = "ferry-test"
	return clientcmd.WriteToFile(*kc, path)
}

// UserConfig is a rest.Config for the least-privilege user.
func (c *Cluster) UserConfig() (*rest.Config, error) {
	return clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
}

// RegisterAPIService makes kube-apiserver proxy group/version to an HTTPS
// server on 127.0.0.1:port whose certificate, signed by caPEM, names
// service.namespace.svc. The Service is an ExternalName one: envtest runs
// no kube-proxy and Endpoints may not hold loopback addresses, while the
// aggregator's default (cluster-IP) resolver sends ExternalName services
// straight to that host.
func (c *Cluster) RegisterAPIService(ctx context.Context, group, version, service string, port int, caPEM []byte) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: service, Namespace: c.CDINamespace},
		Spec: corev1.ServiceSpec{
			Type:         corev1.ServiceTypeExternalName,
			ExternalName: "127.0.0.1",
			Ports:        []corev1.ServicePort{{Name: "https", Port: int32(port)}},
		},
	}
	if err := c.Client.Create(ctx, svc); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service %s: %w", service, err)
	}
	// Typed apiregistration lives in k8s.io/kube-aggregator: unstructured
	// keeps that module out of ferry's graph.
	as := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1",
		"kind":       "APIService",
		"metadata":   map[string]any{"name": version + "." + group},
		"spec": map[string]any{
			"group":                group,
			"version":              version,
			"groupPriorityMinimum": int64(1000),
			"versionPriority":      int64(15),
			"caBundle":             base64.StdEncoding.EncodeToString(caPEM),
			"service":              map[string]any{"namespace": c.CDINamespace, "name": service, "port": int64(port)},
		},
	}}
	if err := c.Client.Create(ctx, as); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create apiservice %s.%s: %w", version, group, err)
	}
	// Wait until the aggregator finds it Available (it probes the server).
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := &unstructured.Unstructured{}
		got.SetAPIVersion("apiregistration.k8s.io/v1")
		got.SetKind("APIService")
		err := c.Client.Get(ctx, client.ObjectKey{Name: version + "." + group}, got)
		msg := ""
		if err == nil {
			conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
			for _, ci := range conds {
				cm, _ := ci.(map[string]any)
				if cm["type"] == "Available" {
					if cm["status"] == "True" {
						return nil
					}
					msg = fmt.Sprintf("%v: %v", cm["reason"], cm["message"])
				}
			}
		} else {
			msg = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("apiservice %s.%s not available: %s", version, group, msg)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// CreateStorageClass creates a StorageClass; wffc selects
// WaitForFirstConsumer binding (Cozystack's replicated class uses it).
func (c *Cluster) CreateStorageClass(ctx context.Context, name string, wffc, isDefault bool) error {
	mode := storagev1.VolumeBindingImmediate
	if wffc {
		mode = storagev1.VolumeBindingWaitForFirstConsumer
	}
	sc := &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: name},
		Provisioner:       "linstor.csi.linbit.com",
		VolumeBindingMode: &mode,
	}
	if isDefault {
		sc.Annotations = map[string]string{"storageclass.kubernetes.io/is-default-class": "true"}
	}
	if err := c.Client.Create(ctx, sc); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create storageclass %s: %w", name, err)
	}
	return nil
}

// Stop stops the control plane and removes its files.
func (c *Cluster) Stop() error {
	var err error
	if c.env != nil {
		err = c.env.Stop()
	}
	os.RemoveAll(c.Dir)
	return err
}

var shared struct {
	once    sync.Once
	c       *Cluster
	err     error
	started bool
	mu      sync.Mutex
}

// Shared returns the package-wide cluster, starting it on first use; tests
// of one package share it (TestMain calls Main to stop it). A missing
// install fails the test under CI=true and skips it otherwise.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		var out io.Writer
		if os.Getenv("FERRY_KUBE_LOG") != "" {
			out = os.Stderr
		}
		shared.c, shared.err = Start(ctx, Options{Output: out})
		shared.mu.Lock()
		shared.started = shared.err == nil
		shared.mu.Unlock()
	})
	if shared.err != nil {
		if errors.Is(shared.err, ErrNotInstalled) && os.Getenv("CI") != "true" {
			t.Skip(shared.err)
		}
		t.Fatal(shared.err)
	}
	return shared.c
}

// Main runs the package's tests and stops the shared cluster afterwards,
// first running stop (peers built on the cluster):
//
//	func TestMain(m *testing.M) { os.Exit(kube.Main(m)) }
func Main(m *testing.M, stop ...func()) int {
	code := m.Run()
	for _, f := range stop {
		f()
	}
	shared.mu.Lock()
	started := shared.started
	shared.mu.Unlock()
	if started {
		if err := shared.c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "kube test peer: stop:", err)
		}
	}
	return code
}
