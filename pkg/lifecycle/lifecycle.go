// Package lifecycle is ferry's thin provisioner: it boots VMs from the
// disks ferry landed, and snapshots, restores, backs up, migrates and
// verifies them, through KubeVirt's and CDI's own APIs only. There is no
// controller and no state outside the cluster (and the backup bucket):
// every operation writes KubeVirt/CDI objects and reads their status.
//
// The package never prints. Operations return reports; waits poll the
// objects' status (get only: the least privilege a CronJob needs).
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"
	kubevirtv1 "kubevirt.io/api/core/v1"
	exportv1 "kubevirt.io/api/export/v1beta1"
	snapshotv1 "kubevirt.io/api/snapshot/v1beta1"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ManagedBy labels every object ferry creates.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "ferry"
	// LabelVM names the VM an auxiliary object (cloud-init secret, backup
	// export, schedule) belongs to.
	LabelVM = "ferry.hikube.io/vm"
)

// Errors callers may test with errors.Is.
var (
	ErrNotFound      = errors.New("not found")
	ErrNotRunning    = errors.New("vm is not running")
	ErrRunning       = errors.New("vm is running")
	ErrNotMigratable = errors.New("vm is not live-migratable")
	ErrTimeout       = errors.New("timed out")
	ErrFailed        = errors.New("failed")
	ErrUnsupported   = errors.New("not supported by this cluster")
)

// AddToScheme registers the API types the package reads and writes:
// client-go's, CDI's and KubeVirt's (core, snapshot, export).
func AddToScheme(s *runtime.Scheme) error {
	for _, add := range []func(*runtime.Scheme) error{
		kubevirtv1.AddToScheme, snapshotv1.AddToScheme, exportv1.AddToScheme, cdiv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			return err
		}
	}
	return nil
}

// Client runs lifecycle operations against one cluster.
type Client struct {
	// Kube is a typed client whose scheme went through AddToScheme.
	Kube client.Client
	// Config is the connection Kube uses; it reaches the KubeVirt
	// subresource API (start/stop/restart) when the cluster serves it.
	// Nil: the subresource API is never used.
	Config *rest.Config
	// Namespace is the default namespace.
	Namespace string
	// Poll is the interval between status reads (default 1 s).
	Poll time.Duration
	// InCluster selects the export's internal links (service DNS names)
	// over its external ones (ingress); see Export.
	InCluster bool
	// HTTPClient, if set, fetches export links (tests; otherwise a client
	// trusting the export's own CA is built).
	HTTPClient *http.Client
	// Now is the clock (tests).
	Now func() time.Time
}

// Validate checks the client and fills in defaults.
func (c *Client) Validate() error {
	if c.Kube == nil {
		return errors.New("lifecycle: no Kubernetes client")
	}
	if c.Namespace == "" {
		c.Namespace = "default"
	}
	if c.Poll <= 0 {
		c.Poll = time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

func (c *Client) ns(ns string) string {
	if ns != "" {
		return ns
	}
	return c.Namespace
}

func (c *Client) now() time.Time {
	if c.Now == nil {
		return time.Now()
	}
	return c.Now()
}

func (c *Client) poll() time.Duration {
	if c.Poll <= 0 {
		return time.Second
	}
	return c.Poll
}

// wait calls check every Poll until it reports done, fails, the timeout
// (0: none) passes or ctx ends. On timeout the error wraps ErrTimeout and
// says what was last seen (check's status string).
func (c *Client) wait(ctx context.Context, timeout time.Duration, check func(context.Context) (done bool, status string, err error)) error {
	parent := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	t := time.NewTicker(c.poll())
	defer t.Stop()
	last := ""
	timedOut := func() error {
		if last == "" {
			last = "no status reported"
		}
		return fmt.Errorf("%w after %s (last seen: %s)", ErrTimeout, timeout, last)
	}
	for {
		done, status, err := check(ctx)
		if err != nil {
			// A read cut short by our own deadline (or refused by the
			// client's rate limiter because of it) is a timeout.
			if dl, ok := ctx.Deadline(); timeout > 0 && parent.Err() == nil && (ctx.Err() != nil || ok && time.Until(dl) < time.Second) {
				return timedOut()
			}
			return err
		}
		if done {
			return nil
		}
		if status != "" {
			last = status
		}
		select {
		case <-ctx.Done():
			if timeout > 0 && parent.Err() == nil {
				return timedOut()
			}
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Ref is a namespaced object name.
type Ref struct{ Namespace, Name string }

func (r Ref) String() string { return r.Namespace + "/" + r.Name }

// DiskRef names an existing disk: dv://[NS/]NAME (a CDI DataVolume),
// pvc://[NS/]NAME (a PersistentVolumeClaim) or vmdisk://[NS/]NAME (a
// Cozystack VMDisk).
type DiskRef struct {
	Kind      string // "dv", "pvc" or "vmdisk"
	Namespace string // "" when not given
	Name      string
}

func (d DiskRef) String() string {
	if d.Namespace == "" {
		return d.Kind + "://" + d.Name
	}
	return d.Kind + "://" + d.Namespace + "/" + d.Name
}

// ParseDiskRef parses dv://[NS/]NAME, pvc://[NS/]NAME or vmdisk://[NS/]NAME.
func ParseDiskRef(s string) (DiskRef, error) {
	kind, rest, ok := strings.Cut(s, "://")
	if !ok {
		return DiskRef{}, fmt.Errorf("disk %q: want dv://[NAMESPACE/]NAME, pvc://… or vmdisk://…", s)
	}
	switch kind {
	case "dv", "pvc", "vmdisk":
	default:
		return DiskRef{}, fmt.Errorf("disk %q: scheme %q: want dv, pvc or vmdisk", s, kind)
	}
	d := DiskRef{Kind: kind}
	if ns, name, ok := strings.Cut(rest, "/"); ok {
		d.Namespace, d.Name = ns, name
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return DiskRef{}, fmt.Errorf("disk %q: namespace: %s", s, strings.Join(errs, "; "))
		}
	} else {
		d.Name = rest
	}
	if errs := validation.IsDNS1123Subdomain(d.Name); len(errs) > 0 {
		return DiskRef{}, fmt.Errorf("disk %q: name: %s", s, strings.Join(errs, "; "))
	}
	return d, nil
}

// checkName validates an object name the way the API server will, so a
// bad name fails before anything is created.
func checkName(what, name string) error {
	if name == "" {
		return fmt.Errorf("%s: no name", what)
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return fmt.Errorf("%s %q: %s", what, name, strings.Join(errs, "; "))
	}
	return nil
}

// notFound turns an API NotFound into ErrNotFound (keeping the message).
func notFound(err error) error {
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%w: %v", ErrNotFound, err)
	}
	return err
}

func managedLabels(vm string) map[string]string {
	l := map[string]string{LabelManagedBy: ManagedBy}
	if vm != "" {
		l[LabelVM] = vm
	}
	return l
}

// conditionTrue reports whether conds holds type t with status True, and
// its reason and message.
func vmiCondition(vmi *kubevirtv1.VirtualMachineInstance, t kubevirtv1.VirtualMachineInstanceConditionType) (found bool, status corev1.ConditionStatus, reason, msg string) {
	for _, c := range vmi.Status.Conditions {
		if c.Type == t {
			return true, c.Status, c.Reason, c.Message
		}
	}
	return false, "", "", ""
}

func ptr[T any](v T) *T { return &v }
