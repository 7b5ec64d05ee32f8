// Package kube builds Kubernetes clients the way kubectl does: a
// kubeconfig from --kubeconfig, $KUBECONFIG or ~/.kube/config, an optional
// context, a namespace from the flag or the context, and the in-cluster
// configuration when ferry runs in a pod. The client knows the CDI and
// KubeVirt types.
package kube

import (
	"errors"
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	kubevirtv1 "kubevirt.io/api/core/v1"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	uploadv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/upload/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Options select the cluster, like kubectl's flags.
type Options struct {
	// Kubeconfig is a kubeconfig path (--kubeconfig); empty: $KUBECONFIG,
	// then ~/.kube/config, then the in-cluster configuration.
	Kubeconfig string
	// Context overrides the kubeconfig's current context (--context).
	Context string
	// Namespace overrides the context's namespace (-n/--namespace).
	Namespace string
	// UserAgent names the client in the apiserver's logs.
	UserAgent string
}

// Client is a ready client and the namespace commands default to.
type Client struct {
	client.WithWatch
	Config *rest.Config
	// Namespace is Options.Namespace, else the context's, else the pod's
	// (in cluster), else "default".
	Namespace string
}

// Scheme has client-go's types, CDI's (core and upload) and KubeVirt's.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(cdiv1.AddToScheme(s))
	utilruntime.Must(uploadv1.AddToScheme(s))
	utilruntime.Must(kubevirtv1.AddToScheme(s))
	return s
}

// Config resolves the rest.Config and namespace without connecting.
func Config(o Options) (*rest.Config, string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if o.Kubeconfig != "" {
		rules.ExplicitPath = o.Kubeconfig
	}
	over := &clientcmd.ConfigOverrides{CurrentContext: o.Context}
	if o.Namespace != "" {
		over.Context.Namespace = o.Namespace
	}
	// The deferred loader falls back to the in-cluster configuration when
	// no kubeconfig is found, as kubectl does.
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, over)
	cfg, err := cc.ClientConfig()
	if err != nil {
		if clientcmd.IsEmptyConfig(err) {
			return nil, "", errors.New("no Kubernetes configuration: pass --kubeconfig, set KUBECONFIG, or run in a pod")
		}
		return nil, "", fmt.Errorf("kubeconfig: %w", err)
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, "", fmt.Errorf("kubeconfig namespace: %w", err)
	}
	if ns == "" {
		ns = "default"
	}
	ua := o.UserAgent
	if ua == "" {
		ua = "ferry"
	}
	cfg.UserAgent = ua
	// A library stays silent: deprecation warnings are not ferry's output.
	cfg.WarningHandler = rest.NoWarnings{}
	// Waits use watches; these only bound bursts of small requests.
	cfg.QPS, cfg.Burst = 50, 100
	return cfg, ns, nil
}

// New connects a client with Scheme.
func New(o Options) (*Client, error) {
	cfg, ns, err := Config(o)
	if err != nil {
		return nil, err
	}
	return NewForConfig(cfg, ns)
}

// NewForConfig wraps an existing rest.Config.
func NewForConfig(cfg *rest.Config, namespace string) (*Client, error) {
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: Scheme()})
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	if namespace == "" {
		namespace = "default"
	}
	return &Client{WithWatch: c, Config: cfg, Namespace: namespace}, nil
}
