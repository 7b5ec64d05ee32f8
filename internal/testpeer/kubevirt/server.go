package kubevirt

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"regexp"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubevirtv1 "kubevirt.io/api/core/v1"
	exportv1 "kubevirt.io/api/export/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

var discardLog = log.New(io.Discard, "", 0)

var exportPath = regexp.MustCompile(`^/api/export\.kubevirt\.io/v1beta1/namespaces/([^/]+)/virtualmachineexports/([^/]+)/volumes/([^/]+)/(disk\.img|disk\.img\.gz)$`)

// startExportServer serves exported volumes the way virt-exportproxy
// does, on loopback HTTPS with the peer's CA.
func (p *Peer) startExportServer() error {
	cert, err := p.CA.TLSCert("virt-exportproxy", "127.0.0.1")
	if err != nil {
		return err
	}
	ln, err := listen()
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:   http.HandlerFunc(p.serveExport),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ErrorLog:  discardLog,
	}
	p.servers = append(p.servers, srv)
	go srv.ServeTLS(ln, "", "")
	p.ExportURL = "https://" + ln.Addr().String()
	return nil
}

func (p *Peer) serveExport(w http.ResponseWriter, r *http.Request) {
	m := exportPath.FindStringSubmatch(r.URL.Path)
	if m == nil || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		http.NotFound(w, r)
		return
	}
	ns, name, vol, file := m[1], m[2], m[3], m[4]
	e := &exportv1.VirtualMachineExport{}
	if err := p.Client.Get(r.Context(), types.NamespacedName{Namespace: ns, Name: name}, e); err != nil || e.Status == nil || e.Status.TokenSecretRef == nil {
		http.NotFound(w, r)
		return
	}
	// The token is read from the export's Secret on every request, like
	// the export server's token file.
	sec := &corev1.Secret{}
	if err := p.Client.Get(r.Context(), types.NamespacedName{Namespace: ns, Name: *e.Status.TokenSecretRef}, sec); err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	tok := r.Header.Get("x-kubevirt-export-token")
	if q := r.URL.Query().Get("x-kubevirt-export-token"); q != "" {
		tok = q
	}
	if tok == "" || tok != string(sec.Data["token"]) {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	p.mu.Lock()
	data, ok := p.exportData[key(ns, name)][vol]
	if r.Method == http.MethodGet {
		p.requests[r.URL.Path]++
	}
	fault := p.fault
	if r.Method == http.MethodGet && fault.Times != 0 {
		if p.fault.Times > 0 {
			p.fault.Times--
		}
	} else {
		fault = ExportFault{}
	}
	p.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	if fault.Times != 0 {
		left := fault.CutAfter
		if fault.BreakAt > 0 {
			left = fault.BreakAt - rangeStart(r.Header.Get("Range"))
			if left < 0 {
				left = 1 << 62
			}
		}
		w = &cutWriter{ResponseWriter: w, left: left}
	}
	if file == "disk.img" {
		http.ServeContent(w, r, "disk.img", time.Time{}, bytes.NewReader(data))
		return
	}
	w.Header().Set("Content-Type", "application/gzip")
	zw := gzip.NewWriter(w)
	zw.Write(data)
	zw.Close()
}

// cutWriter aborts the response after left body bytes, as a dropped
// connection does.
type cutWriter struct {
	http.ResponseWriter
	left int64
}

func (c *cutWriter) Write(b []byte) (int, error) {
	if int64(len(b)) > c.left {
		n, _ := c.ResponseWriter.Write(b[:c.left])
		c.left = 0
		if f, ok := c.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		_ = n
		panic(http.ErrAbortHandler)
	}
	c.left -= int64(len(b))
	return c.ResponseWriter.Write(b)
}

// ---- virt-api subresources ----

const subGroup, subVersion = "subresources.kubevirt.io", "v1"

var subPath = regexp.MustCompile(`^/apis/subresources\.kubevirt\.io/v1/namespaces/([^/]+)/virtualmachines/([^/]+)/(start|stop|restart)$`)

// ServeSubresources serves virt-api's start/stop/restart through the real
// apiserver's aggregation layer (which authenticates and authorizes the
// caller: update on virtualmachines/start etc.).
func (p *Peer) ServeSubresources(ctx context.Context) error {
	cm := &corev1.ConfigMap{}
	if err := p.Client.Get(ctx, client.ObjectKey{Namespace: "kube-system", Name: "extension-apiserver-authentication"}, cm); err != nil {
		return fmt.Errorf("read extension-apiserver-authentication: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(cm.Data["requestheader-client-ca-file"])) {
		return fmt.Errorf("extension-apiserver-authentication has no requestheader-client-ca-file")
	}
	const svc = "virt-api"
	cert, err := p.CA.TLSCert(svc, svc+"."+p.cluster.CDINamespace+".svc")
	if err != nil {
		return err
	}
	ln, err := listen()
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(p.serveSubresource),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool,
			MinVersion: tls.VersionTLS12},
		ErrorLog: discardLog,
	}
	p.servers = append(p.servers, srv)
	go srv.ServeTLS(ln, "", "")
	return p.cluster.RegisterAPIService(ctx, subGroup, subVersion, svc, ln.Addr().(*net.TCPAddr).Port, p.CA.CertPEM)
}

func (p *Peer) serveSubresource(w http.ResponseWriter, r *http.Request) {
	gv := subGroup + "/" + subVersion
	group := metav1.APIGroup{
		TypeMeta: metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"}, Name: subGroup,
		Versions:         []metav1.GroupVersionForDiscovery{{GroupVersion: gv, Version: subVersion}},
		PreferredVersion: metav1.GroupVersionForDiscovery{GroupVersion: gv, Version: subVersion},
	}
	path := strings.TrimSuffix(r.URL.Path, "/")
	switch {
	case r.Method == http.MethodGet && path == "/healthz":
		io.WriteString(w, "OK")
		return
	case r.Method == http.MethodGet && path == "/apis":
		writeJSON(w, http.StatusOK, metav1.APIGroupList{TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"}, Groups: []metav1.APIGroup{group}})
		return
	case r.Method == http.MethodGet && path == "/apis/"+subGroup:
		writeJSON(w, http.StatusOK, group)
		return
	case r.Method == http.MethodGet && path == "/apis/"+gv:
		var res []metav1.APIResource
		for _, s := range []string{"start", "stop", "restart", "migrate"} {
			res = append(res, metav1.APIResource{Name: "virtualmachines/" + s, Namespaced: true, Kind: "VirtualMachine", Verbs: []string{"update"}})
		}
		writeJSON(w, http.StatusOK, metav1.APIResourceList{TypeMeta: metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"}, GroupVersion: gv, APIResources: res})
		return
	}
	m := subPath.FindStringSubmatch(r.URL.Path)
	if m == nil || r.Method != http.MethodPut {
		http.NotFound(w, r)
		return
	}
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || r.Header.Get("X-Remote-User") == "" {
		writeJSON(w, http.StatusUnauthorized, "not from the aggregator")
		return
	}
	ns, name, verb := m[1], m[2], m[3]
	ctx := r.Context()
	vm := &kubevirtv1.VirtualMachine{}
	if err := p.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, vm); err != nil {
		writeJSON(w, http.StatusNotFound, err.Error())
		return
	}
	p.mu.Lock()
	p.subCalls = append(p.subCalls, verb+" "+ns+"/"+name)
	p.mu.Unlock()
	rs, _ := vm.RunStrategy()
	var err error
	switch verb {
	case "start":
		if rs == kubevirtv1.RunStrategyHalted {
			err = p.setRunStrategy(ctx, vm, kubevirtv1.RunStrategyAlways)
		} else if rs == kubevirtv1.RunStrategyManual {
			// virt-api adds a start request; here: create the instance.
			vm.Spec.RunStrategy = ptr(kubevirtv1.RunStrategyAlways)
			err = p.setRunStrategy(ctx, vm, kubevirtv1.RunStrategyAlways)
		}
	case "stop":
		err = p.setRunStrategy(ctx, vm, kubevirtv1.RunStrategyHalted)
	case "restart":
		vmi := &kubevirtv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
		err = client.IgnoreNotFound(p.Client.Delete(ctx, vmi))
	}
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

func (p *Peer) setRunStrategy(ctx context.Context, vm *kubevirtv1.VirtualMachine, rs kubevirtv1.VirtualMachineRunStrategy) error {
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"runStrategy": string(rs), "running": nil}})
	return p.Client.Patch(ctx, vm, client.RawPatch(types.MergePatchType, patch))
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// rangeStart is the first byte a "bytes=N-…" request asks for.
func rangeStart(h string) int64 {
	var n int64
	if _, err := fmt.Sscanf(h, "bytes=%d-", &n); err != nil {
		return 0
	}
	return n
}
