package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	exportv1 "kubevirt.io/api/export/v1beta1"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"

	"github.com/hikube/ferry/importer"
	"github.com/hikube/ferry/pkg/progress"
)

// ErrDigestMismatch means a volume does not hold the expected image.
var ErrDigestMismatch = errors.New("digest mismatch")

// VerifyOptions configure Verify.
type VerifyOptions struct {
	Disk DiskRef // dv:// or pvc://
	// Digest is "sha256:HEX", the SHA-256 of the RAW image.
	Digest string
	// Timeout bounds the wait for the export (0: 10 min).
	Timeout  time.Duration
	Progress *progress.Counter
}

// Validate checks the options.
func (o *VerifyOptions) Validate() error {
	if o.Disk.Kind != "dv" && o.Disk.Kind != "pvc" {
		return fmt.Errorf("disk %s: want dv://[NS/]NAME or pvc://[NS/]NAME", o.Disk)
	}
	alg, hexsum, ok := strings.Cut(o.Digest, ":")
	if !ok || alg != "sha256" || len(hexsum) != 64 || strings.Trim(strings.ToLower(hexsum), "0123456789abcdef") != "" {
		return fmt.Errorf("--digest %q: want sha256:<64 hex digits>", o.Digest)
	}
	o.Digest = "sha256:" + strings.ToLower(hexsum)
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Minute
	}
	return nil
}

// VerifyResult reports a verification.
type VerifyResult struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Expected  string `json:"expected"`
	Actual    string `json:"actual"`
	Bytes     int64  `json:"bytes"`
	Match     bool   `json:"match"`
}

// Verify checks that a volume holds exactly the image with the given
// SHA-256: it exports the volume (VirtualMachineExport of its PVC),
// reads it in full through the raw link and compares. A mismatch is an
// error wrapping ErrDigestMismatch (the result still says what was read).
func (c *Client) Verify(ctx context.Context, o VerifyOptions) (*VerifyResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	ns := c.ns(o.Disk.Namespace)
	fail := func(stage string, err error) error {
		return fmt.Errorf("verify %s: %s: %w", Ref{ns, o.Disk.Name}, stage, err)
	}
	if o.Disk.Kind == "dv" {
		dv := &cdiv1.DataVolume{}
		if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: ns, Name: o.Disk.Name}, dv); err != nil {
			return nil, fail("get DataVolume", notFound(err))
		}
		if dv.Status.Phase != cdiv1.Succeeded {
			return nil, fail("check", fmt.Errorf("DataVolume phase is %q, not Succeeded: it is not populated yet", dv.Status.Phase))
		}
	}
	res := &VerifyResult{Namespace: ns, Name: o.Disk.Name, Expected: o.Digest}
	// The DataVolume's claim has its name; KubeVirt exports claims.
	name := exportName("ferry-verify-" + o.Disk.Name)
	source := corev1.TypedLocalObjectReference{APIGroup: ptr(""), Kind: "PersistentVolumeClaim", Name: o.Disk.Name}
	sess, err := c.startExport(ctx, ns, name, source, managedLabels(""), o.Timeout)
	if err != nil {
		return nil, fail("export", err)
	}
	defer c.deleteExport(ctx, ns, name)
	u, _, err := sess.url(o.Disk.Name, exportv1.KubeVirtRaw)
	if err != nil {
		return nil, fail("export", err)
	}
	hc, err := c.exportHTTPClient(sess)
	if err != nil {
		return nil, fail("export", err)
	}
	st, err := importer.OpenStream(ctx, u, importer.Options{
		Headers:    http.Header{ExportTokenHeader: []string{sess.token}},
		HTTPClient: hc,
		Checksum:   o.Digest,
		Progress:   o.Progress,
	})
	if err != nil {
		return nil, fail("read "+redact(u), err)
	}
	defer st.Close()
	n, err := io.Copy(io.Discard, st)
	res.Bytes = n
	d, cerr := st.Complete(ctx)
	res.Actual = "sha256:" + d.SHA256
	var ce *importer.ChecksumError
	if errors.As(err, &ce) || errors.As(cerr, &ce) {
		res.Actual = ce.Alg + ":" + ce.Actual
		return res, fail("compare", fmt.Errorf("%w: volume holds %s, expected %s", ErrDigestMismatch, res.Actual, o.Digest))
	}
	if err != nil {
		return res, fail("read "+redact(u), err)
	}
	if cerr != nil {
		return res, fail("read "+redact(u), cerr)
	}
	res.Match = res.Actual == o.Digest
	if !res.Match {
		return res, fail("compare", fmt.Errorf("%w: volume holds %s, expected %s", ErrDigestMismatch, res.Actual, o.Digest))
	}
	return res, nil
}
