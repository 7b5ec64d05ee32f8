package lifecycle

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	exportv1 "kubevirt.io/api/export/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ExportTokenHeader carries the export token to KubeVirt's export server.
const ExportTokenHeader = "x-kubevirt-export-token"

// DefaultExportTTL bounds an export ferry forgets to delete (crash): KubeVirt
// removes it after that.
const DefaultExportTTL = 2 * time.Hour

// exportName makes a unique export name from base: KubeVirt names the
// export's Service virt-export-NAME, a DNS label (63 characters), and a
// deleted export's token Secret may linger until garbage-collected, so
// names are never reused.
func exportName(base string) string {
	b := make([]byte, 3)
	rand.Read(b)
	suffix := "-" + hex.EncodeToString(b)
	const max = 63 - len("virt-export-")
	if len(base)+len(suffix) > max {
		base = base[:max-len(suffix)]
	}
	return strings.TrimRight(base, "-.") + suffix
}

// exportSession is a ready VirtualMachineExport: its links and token.
type exportSession struct {
	ns, name string
	token    string
	// cert is the PEM CA of the chosen links; volumes maps an exported
	// volume (PVC) name to its URLs by format.
	cert     string
	volumes  map[string]map[exportv1.ExportVolumeFormat]string
	order    []string
	internal bool
}

// startExport creates a VirtualMachineExport of source with a token of
// ferry's own (a Secret owned by the export, so it goes with it), then
// waits until the export is Ready with links.
func (c *Client) startExport(ctx context.Context, ns, name string, source corev1.TypedLocalObjectReference, labels map[string]string, timeout time.Duration) (*exportSession, error) {
	tok := make([]byte, 32)
	if _, err := rand.Read(tok); err != nil {
		return nil, err
	}
	token := hex.EncodeToString(tok)
	secretName := name + "-token"
	ex := &exportv1.VirtualMachineExport{
		TypeMeta:   metav1.TypeMeta{APIVersion: exportv1.SchemeGroupVersion.String(), Kind: "VirtualMachineExport"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: exportv1.VirtualMachineExportSpec{
			Source:         source,
			TokenSecretRef: ptr(secretName),
			TTLDuration:    &metav1.Duration{Duration: DefaultExportTTL},
		},
	}
	if err := c.Kube.Create(ctx, ex); err != nil {
		return nil, fmt.Errorf("create VirtualMachineExport %s: %w", name, err)
	}
	// Only "create" on secrets is needed: no reading of other secrets, and
	// the garbage collector deletes it with its owner.
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secretName, Namespace: ns, Labels: labels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: exportv1.SchemeGroupVersion.String(), Kind: "VirtualMachineExport", Name: ex.Name, UID: ex.UID}}},
		Type:       corev1.SecretTypeOpaque,
		StringData: map[string]string{"token": token},
	}
	if err := c.Kube.Create(ctx, secret); err != nil {
		c.deleteExport(ctx, ns, name)
		return nil, fmt.Errorf("create export token Secret %s: %w", secretName, err)
	}
	s := &exportSession{ns: ns, name: name, token: token}
	err := c.wait(ctx, timeout, func(ctx context.Context) (bool, string, error) {
		got := &exportv1.VirtualMachineExport{}
		if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, got); err != nil {
			return false, "", notFound(err)
		}
		st := got.Status
		if st == nil {
			return false, "no status yet", nil
		}
		status := "phase " + string(st.Phase)
		for _, cond := range st.Conditions {
			if cond.Type == exportv1.ConditionReady && cond.Status != corev1.ConditionTrue && (cond.Reason != "" || cond.Message != "") {
				status += fmt.Sprintf(" (%s: %s)", cond.Reason, cond.Message)
			}
		}
		switch st.Phase {
		case exportv1.Skipped, exportv1.Terminated:
			return false, "", fmt.Errorf("%w: export %s", ErrFailed, status)
		case exportv1.Ready:
		default:
			return false, status, nil
		}
		if st.Links == nil || (st.Links.External == nil && st.Links.Internal == nil) {
			return false, status + ", no links yet", nil
		}
		return s.pick(st.Links, c.InCluster), status, nil
	})
	if err != nil {
		c.deleteExport(ctx, ns, name)
		return nil, fmt.Errorf("wait for VirtualMachineExport %s: %w", name, err)
	}
	return s, nil
}

// pick chooses internal links in the cluster (service DNS names resolve
// there only) and external ones (ingress) elsewhere, falling back to
// the other kind.
func (s *exportSession) pick(l *exportv1.VirtualMachineExportLinks, inCluster bool) bool {
	first, second := l.External, l.Internal
	if inCluster {
		first, second = l.Internal, l.External
	}
	link := first
	if link == nil || len(link.Volumes) == 0 {
		link = second
	}
	if link == nil || len(link.Volumes) == 0 {
		return false
	}
	s.internal = link == l.Internal
	s.cert = link.Cert
	s.volumes = map[string]map[exportv1.ExportVolumeFormat]string{}
	s.order = nil
	for _, v := range link.Volumes {
		m := map[exportv1.ExportVolumeFormat]string{}
		for _, f := range v.Formats {
			m[f.Format] = f.Url
		}
		s.volumes[v.Name] = m
		s.order = append(s.order, v.Name)
	}
	return true
}

// url returns the volume's link in the first available format.
func (s *exportSession) url(volume string, formats ...exportv1.ExportVolumeFormat) (string, exportv1.ExportVolumeFormat, error) {
	m, ok := s.volumes[volume]
	if !ok {
		return "", "", fmt.Errorf("export %s has no volume %s (has %s)", s.name, volume, strings.Join(s.order, ", "))
	}
	for _, f := range formats {
		if u := m[f]; u != "" {
			return u, f, nil
		}
	}
	return "", "", fmt.Errorf("export %s: volume %s has no %v link", s.name, volume, formats)
}

// httpClient trusts the export's CA (plus the system roots: an external
// link may sit behind a publicly signed ingress).
func (c *Client) exportHTTPClient(s *exportSession) (*http.Client, error) {
	if c.HTTPClient != nil {
		return c.HTTPClient, nil
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if s.cert != "" && !pool.AppendCertsFromPEM([]byte(s.cert)) {
		return nil, fmt.Errorf("export %s: link certificate is not PEM", s.name)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	tr.DisableCompression = true // the gzip link is gzip on purpose
	return &http.Client{Transport: tr}, nil
}

// deleteExport deletes the export (its token Secret goes with it), with
// a context of its own so cleanup survives a cancelled operation.
func (c *Client) deleteExport(ctx context.Context, ns, name string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	ex := &exportv1.VirtualMachineExport{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := c.Kube.Delete(ctx, ex, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete VirtualMachineExport %s: %w", name, err)
	}
	return nil
}
