// Package cdi is a test peer that plays the parts of CDI (and of the
// Cozystack VMDisk chart) that ferry talks to, against a real
// kube-apiserver (internal/testpeer/kube):
//
//   - cdi-apiserver: the aggregated upload.cdi.kubevirt.io/v1beta1 API
//     issuing upload tokens (front-proxy authentication, SubjectAccessReview
//     authorization, short-lived signed tokens);
//   - cdi-uploadproxy + upload server: TLS, bearer token checked, the sync,
//     async and form paths, HEAD on upload-async, CDI's status codes (400
//     bad auth header or image too large, 401 bad/expired token, 503 not
//     ready/busy, 409 already uploaded, 500 stream error), gzip/xz/zstd
//     bodies decompressed like CDI does; what it receives is written to a
//     file the test can hash;
//   - the DataVolume controller: PVC creation (quota admission is the real
//     apiserver's), phases Pending/WaitForFirstConsumer/UploadScheduled/
//     UploadReady/ImportInProgress/Succeeded/Failed, http imports for pull
//     DataVolumes (checksum verified);
//   - the CDI operator's published configuration: CDIConfig (upload proxy
//     URL, filesystem overhead), a StorageProfile, the
//     cdi-uploadproxy-signer-bundle ConfigMap;
//   - Cozystack: a VMDisk with source.upload gets its DataVolume
//     vm-disk-NAME.
//
// Fault knobs (SetFaults, ExpireTokens) let tests break things the way a
// real cluster does.
package cdi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hikube/ferry/internal/testpeer/kube"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

var discardLog = log.New(io.Discard, "", 0)

// Options configure the peer.
type Options struct {
	// StorageClass is created as the default class (default "replicated",
	// WaitForFirstConsumer like Cozystack's); its StorageProfile says
	// Block + ReadWriteMany.
	StorageClass string
	// Overhead is CDIConfig's filesystem overhead (default "0.055").
	Overhead string
	// TokenTTL is the upload token lifetime (CDI: 5 minutes).
	TokenTTL time.Duration
	// ReadyDelay is how long a DataVolume stays UploadScheduled before
	// UploadReady (the upload pod starting; default 100 ms). ReadyWait is
	// how long the proxy waits for readiness before 503 (CDI: 10 s;
	// default 2 s).
	ReadyDelay, ReadyWait time.Duration
	// NoProxyURL leaves CDIConfig's status.uploadProxyURL empty (clients
	// must be told the URL).
	NoProxyURL bool
	// Dir receives uploaded images (default: a temp dir removed on Stop).
	Dir string
}

// Faults break the next uploads; zero values do nothing. SetFaults
// replaces the whole set.
type Faults struct {
	// Unavailable answers the next N upload requests (HEAD included) with
	// 503, as while the upload pod is not ready.
	Unavailable int
	// DropAfter closes the connection after that many body bytes, for
	// the next Drops uploads (a broken transfer).
	DropAfter int64
	Drops     int
	// ExpireOnDrop expires every token issued so far when a connection is
	// dropped: the retry finds its token expired.
	ExpireOnDrop bool
	// StreamErrors answers the next N uploads with 500 after reading the
	// body (CDI's "Saving stream failed").
	StreamErrors int
	// NoAsync answers HEAD upload-async with 404 (CDI before async).
	NoAsync bool
	// FailUpload sets the DataVolume Failed instead of Succeeded after
	// the next upload.
	FailUpload bool
}

// Upload is what the peer received for one DataVolume.
type Upload struct {
	Namespace, Name string
	// Path holds the decompressed RAW (sparse); SHA256 and Size describe
	// it.
	Path   string
	SHA256 string
	Size   int64
	// Encoding is the body's compression ("", "gzip", "xz", "zstd").
	Encoding string
	// Async and Form tell which path took it.
	Async, Form bool
	// Attempts counts POSTs that reached the upload server.
	Attempts int
}

// Peer is a running fake CDI.
type Peer struct {
	// CA signs the proxy's and the API's certificates; it is published in
	// the cdi-uploadproxy-signer-bundle ConfigMap.
	CA *kube.CA
	// ProxyURL is https://127.0.0.1:PORT.
	ProxyURL string

	cluster *kube.Cluster
	o       Options
	tokens  *tokens
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	servers []*http.Server

	allowedProxyNames []string
	removeDir         bool

	mu      sync.Mutex
	faults  Faults
	volumes map[types.UID]*volume
	uploads map[string]*Upload // ns/name
}

type volume struct {
	uploading, processing, done bool
}

// Start starts the peer against cluster. Stop it when done.
func Start(ctx context.Context, cluster *kube.Cluster, o Options) (*Peer, error) {
	if o.StorageClass == "" {
		o.StorageClass = "replicated"
	}
	if o.Overhead == "" {
		o.Overhead = "0.055"
	}
	if o.TokenTTL == 0 {
		o.TokenTTL = 5 * time.Minute
	}
	if o.ReadyDelay == 0 {
		o.ReadyDelay = 100 * time.Millisecond
	}
	if o.ReadyWait == 0 {
		o.ReadyWait = 2 * time.Second
	}
	p := &Peer{cluster: cluster, o: o, tokens: newTokens(o.TokenTTL), volumes: map[types.UID]*volume{}, uploads: map[string]*Upload{}}
	if p.o.Dir == "" {
		d, err := os.MkdirTemp("", "ferry-cdi-")
		if err != nil {
			return nil, err
		}
		p.o.Dir, p.removeDir = d, true
	}
	var err error
	if p.CA, err = kube.NewCA("cdi-uploadproxy-signer"); err != nil {
		return nil, err
	}
	if err := p.startProxy(); err != nil {
		p.Stop()
		return nil, err
	}
	if err := p.startAPI(ctx); err != nil {
		p.Stop()
		return nil, err
	}
	if err := p.publishConfig(ctx); err != nil {
		p.Stop()
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.wg.Add(2)
	go p.runDataVolumes(rctx)
	go p.runVMDisks(rctx)
	return p, nil
}

// Stop stops the servers and controllers.
func (p *Peer) Stop() {
	if p.cancel != nil {
		p.cancel()
	}
	for _, s := range p.servers {
		s.Close()
	}
	p.wg.Wait()
	if p.removeDir {
		os.RemoveAll(p.o.Dir)
	}
}

// SetFaults arms faults for the next uploads.
func (p *Peer) SetFaults(f Faults) {
	p.mu.Lock()
	p.faults = f
	p.mu.Unlock()
}

// ExpireTokens makes every upload token issued so far expired.
func (p *Peer) ExpireTokens() { p.tokens.expireAll() }

// TokensIssued counts tokens the aggregated API handed out.
func (p *Peer) TokensIssued() int { return p.tokens.count() }

// Received returns what was uploaded to the DataVolume ns/name, or nil.
func (p *Peer) Received(ns, name string) *Upload {
	p.mu.Lock()
	defer p.mu.Unlock()
	if u, ok := p.uploads[ns+"/"+name]; ok {
		c := *u
		return &c
	}
	return nil
}

// Reset forgets uploads and faults (between tests).
func (p *Peer) Reset() {
	p.mu.Lock()
	p.faults = Faults{}
	p.uploads = map[string]*Upload{}
	p.mu.Unlock()
}

func (p *Peer) startProxy() error {
	cert, err := p.CA.TLSCert("cdi-uploadproxy", "127.0.0.1", "localhost", "cdi-uploadproxy."+p.cluster.CDINamespace+".svc")
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(p.serveProxy),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          discardLog,
		// HTTP/1.1 only: a dropped transfer hijacks and closes the
		// connection.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	srv.TLSConfig = tlsServerConfig(cert)
	p.servers = append(p.servers, srv)
	p.ProxyURL = "https://" + ln.Addr().String()
	go srv.ServeTLS(ln, "", "")
	return nil
}

// publishConfig writes what the CDI operator and controllers publish.
func (p *Peer) publishConfig(ctx context.Context) error {
	c := p.cluster.Client
	if err := p.cluster.CreateStorageClass(ctx, p.o.StorageClass, true, true); err != nil {
		return err
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "cdi-uploadproxy-signer-bundle", Namespace: p.cluster.CDINamespace},
		Data:       map[string]string{"ca-bundle.crt": string(p.CA.CertPEM)},
	}
	if err := createOrUpdate(ctx, c, cm); err != nil {
		return err
	}
	cfg := &cdiv1.CDIConfig{ObjectMeta: metav1.ObjectMeta{Name: "config"}}
	if err := c.Get(ctx, client.ObjectKeyFromObject(cfg), cfg); apierrors.IsNotFound(err) {
		if err := c.Create(ctx, cfg); err != nil {
			return fmt.Errorf("create cdiconfig: %w", err)
		}
	} else if err != nil {
		return err
	}
	// status.uploadProxyURL is a bare host[:port] in real clusters;
	// clients add the scheme.
	if !p.o.NoProxyURL {
		cfg.Status.UploadProxyURL = ptr.To(p.ProxyURL[len("https://"):])
	}
	cfg.Status.FilesystemOverhead = &cdiv1.FilesystemOverhead{
		Global:       cdiv1.Percent(p.o.Overhead),
		StorageClass: map[string]cdiv1.Percent{p.o.StorageClass: cdiv1.Percent(p.o.Overhead)},
	}
	// CDIConfig has no status subresource: a plain update.
	if err := c.Update(ctx, cfg); err != nil {
		return fmt.Errorf("update cdiconfig: %w", err)
	}
	sp := &cdiv1.StorageProfile{ObjectMeta: metav1.ObjectMeta{Name: p.o.StorageClass}}
	if err := c.Create(ctx, sp); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create storageprofile: %w", err)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(sp), sp); err != nil {
		return err
	}
	sp.Status = cdiv1.StorageProfileStatus{
		StorageClass: ptr.To(p.o.StorageClass),
		Provisioner:  ptr.To("linstor.csi.linbit.com"),
		ClaimPropertySets: []cdiv1.ClaimPropertySet{{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany},
			VolumeMode:  ptr.To(corev1.PersistentVolumeBlock),
		}},
	}
	if err := c.Status().Update(ctx, sp); err != nil {
		return fmt.Errorf("update storageprofile status: %w", err)
	}
	return nil
}

func createOrUpdate(ctx context.Context, c client.Client, obj client.Object) error {
	err := c.Create(ctx, obj)
	if apierrors.IsAlreadyExists(err) {
		return c.Update(ctx, obj)
	}
	return err
}

// SetPhase forces a DataVolume's phase and a condition, for states the
// peer does not reach by itself (PendingPopulation, a Failed import...).
func (p *Peer) SetPhase(ctx context.Context, ns, name string, phase cdiv1.DataVolumePhase, reason, message string) error {
	return p.updateStatus(ctx, ns, name, func(st *cdiv1.DataVolumeStatus) {
		st.Phase = phase
		setCondition(st, cdiv1.DataVolumeRunning, corev1.ConditionFalse, reason, message)
	})
}

func (p *Peer) updateStatus(ctx context.Context, ns, name string, mutate func(*cdiv1.DataVolumeStatus)) error {
	for range 10 {
		dv := &cdiv1.DataVolume{}
		if err := p.cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, dv); err != nil {
			return err
		}
		mutate(&dv.Status)
		err := p.cluster.Client.Status().Update(ctx, dv)
		if !apierrors.IsConflict(err) {
			return err
		}
	}
	return errors.New("status update: too many conflicts")
}

func setCondition(st *cdiv1.DataVolumeStatus, t cdiv1.DataVolumeConditionType, s corev1.ConditionStatus, reason, msg string) {
	now := metav1.Now()
	for i := range st.Conditions {
		c := &st.Conditions[i]
		if c.Type == t {
			if c.Status != s {
				c.LastTransitionTime = now
			}
			c.Status, c.Reason, c.Message, c.LastHeartbeatTime = s, reason, msg, now
			return
		}
	}
	st.Conditions = append(st.Conditions, cdiv1.DataVolumeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastTransitionTime: now, LastHeartbeatTime: now})
}

// quantity parses a storage request.
func quantity(q resource.Quantity) int64 { return q.Value() }

func (p *Peer) imagePath(ns, name string) string {
	return filepath.Join(p.o.Dir, ns, name+".raw")
}
