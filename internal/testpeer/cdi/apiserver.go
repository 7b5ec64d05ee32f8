package cdi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	uploadv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/upload/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

const (
	uploadGroup   = "upload.cdi.kubevirt.io"
	uploadVersion = "v1beta1"
	apiService    = "cdi-api"
)

// startAPI serves CDI's aggregated upload API (what cdi-apiserver does)
// and registers it with kube-apiserver, so clients reach it through the
// apiserver exactly as in a real cluster: the aggregator authenticates the
// user, forwards the request with a front-proxy client certificate and
// X-Remote-* headers, and this server authorizes it with a
// SubjectAccessReview.
func (p *Peer) startAPI(ctx context.Context) error {
	// The client CA and allowed names come from where kube-apiserver
	// publishes them for extension servers.
	cm := &corev1.ConfigMap{}
	if err := p.cluster.Client.Get(ctx, client.ObjectKey{Namespace: "kube-system", Name: "extension-apiserver-authentication"}, cm); err != nil {
		return fmt.Errorf("read extension-apiserver-authentication: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(cm.Data["requestheader-client-ca-file"])) {
		return fmt.Errorf("extension-apiserver-authentication has no requestheader-client-ca-file")
	}
	var allowed []string
	if s := cm.Data["requestheader-allowed-names"]; s != "" {
		if err := json.Unmarshal([]byte(s), &allowed); err != nil {
			return fmt.Errorf("requestheader-allowed-names: %w", err)
		}
	}
	p.allowedProxyNames = allowed

	cert, err := p.CA.TLSCert(apiService, apiService+"."+p.cluster.CDINamespace+".svc")
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(p.serveAPI),
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.VerifyClientCertIfGiven,
			ClientCAs:    pool,
			MinVersion:   tls.VersionTLS12,
		},
		ErrorLog: discardLog,
	}
	p.servers = append(p.servers, srv)
	go srv.ServeTLS(ln, "", "")
	port := ln.Addr().(*net.TCPAddr).Port
	return p.cluster.RegisterAPIService(ctx, uploadGroup, uploadVersion, apiService, port, p.CA.CertPEM)
}

var tokenPath = regexp.MustCompile(`^/apis/` + regexp.QuoteMeta(uploadGroup) + `/` + uploadVersion + `/namespaces/([a-z0-9][a-z0-9\-]*)/uploadtokenrequests/?$`)

func (p *Peer) serveAPI(w http.ResponseWriter, r *http.Request) {
	gv := uploadGroup + "/" + uploadVersion
	group := metav1.APIGroup{
		TypeMeta:         metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"},
		Name:             uploadGroup,
		Versions:         []metav1.GroupVersionForDiscovery{{GroupVersion: gv, Version: uploadVersion}},
		PreferredVersion: metav1.GroupVersionForDiscovery{GroupVersion: gv, Version: uploadVersion},
	}
	switch path := strings.TrimSuffix(r.URL.Path, "/"); {
	case r.Method == http.MethodGet && path == "/healthz":
		io.WriteString(w, "OK")
	case r.Method == http.MethodGet && path == "/apis":
		writeJSON(w, http.StatusOK, metav1.APIGroupList{TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"}, Groups: []metav1.APIGroup{group}})
	case r.Method == http.MethodGet && path == "/apis/"+uploadGroup:
		writeJSON(w, http.StatusOK, group)
	case r.Method == http.MethodGet && path == "/apis/"+gv:
		writeJSON(w, http.StatusOK, metav1.APIResourceList{
			TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
			GroupVersion: gv,
			APIResources: []metav1.APIResource{{
				Name: "uploadtokenrequests", SingularName: "uploadtokenrequest", Namespaced: true,
				Group: uploadGroup, Version: uploadVersion, Kind: "UploadTokenRequest",
				Verbs: []string{"create"}, ShortNames: []string{"utr", "utrs"},
			}},
		})
	case r.Method == http.MethodPost && tokenPath.MatchString(r.URL.Path):
		p.serveTokenRequest(w, r, tokenPath.FindStringSubmatch(r.URL.Path)[1])
	default:
		http.NotFound(w, r)
	}
}

func (p *Peer) serveTokenRequest(w http.ResponseWriter, r *http.Request, ns string) {
	ok, reason, err := p.authorize(r, ns)
	if err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	if !ok {
		// cdi-apiserver answers 401 with the reason, not 403.
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, reason)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, err.Error())
		return
	}
	req := &uploadv1.UploadTokenRequest{}
	if err := json.Unmarshal(body, req); err != nil {
		writeJSON(w, http.StatusBadRequest, err.Error())
		return
	}
	// Like CDI, no check that the PVC exists: the proxy checks on use.
	tok, err := p.tokens.generate(ns, req.Spec.PvcName)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, err.Error())
		return
	}
	req.Status.Token = tok
	writeJSON(w, http.StatusOK, req)
}

// authorize does what CDI's authorizer does: trust the X-Remote-* headers
// only from a verified front-proxy certificate, then ask the apiserver.
func (p *Peer) authorize(r *http.Request, ns string) (bool, string, error) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return false, "request is not from the aggregator: no verified client certificate", nil
	}
	cn := r.TLS.VerifiedChains[0][0].Subject.CommonName
	if len(p.allowedProxyNames) > 0 && !slices.Contains(p.allowedProxyNames, cn) {
		return false, "client certificate " + cn + " not allowed", nil
	}
	user := r.Header.Get("X-Remote-User")
	if user == "" {
		return false, "no X-Remote-User", nil
	}
	extra := map[string]authorizationv1.ExtraValue{}
	for k, v := range r.Header {
		if rest, ok := strings.CutPrefix(k, "X-Remote-Extra-"); ok {
			extra[strings.ToLower(rest)] = v
		}
	}
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   user,
		Groups: r.Header.Values("X-Remote-Group"),
		Extra:  extra,
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: ns, Verb: "create", Group: uploadGroup, Version: uploadVersion, Resource: "uploadtokenrequests",
		},
	}}
	res, err := p.cluster.Clientset.AuthorizationV1().SubjectAccessReviews().Create(r.Context(), sar, metav1.CreateOptions{})
	if err != nil {
		return false, "", err
	}
	if !res.Status.Allowed {
		return false, fmt.Sprintf("User %s does not have permission to create uploadtokenrequests in namespace %s", user, ns), nil
	}
	return true, "", nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
