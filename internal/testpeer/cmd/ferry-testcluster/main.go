// Command ferry-testcluster runs the tests' kube peer (etcd +
// kube-apiserver, CDI CRDs, least-privilege user) and the fake CDI
// (controller, aggregated upload API, upload proxy) outside `go test`, for
// the import benchmark and for trying ferry by hand. Once up it prints
// KEY=VALUE lines, then "ready":
//
//	kubeconfig=PATH   the least-privilege user's kubeconfig
//	namespace=NS      its namespace
//	proxy=URL         the upload proxy (https://127.0.0.1:PORT)
//	ca=PATH           the proxy's CA (PEM)
//	control=URL       this command's loopback control API
//
// The control API reads what the fake CDI received, which only lives in
// this process:
//
//	GET  /received?ns=NS&name=NAME  the Upload as JSON (404: nothing yet)
//	POST /forget?ns=NS&name=NAME    delete the received RAW and the
//	                                DataVolume
//
// It serves until SIGINT/SIGTERM, or until stdin closes with -stdin, so a
// parent that dies without cleaning up does not leave etcd and
// kube-apiserver behind.
//
//	ferry-testcluster [-dir DIR] [-token-ttl 5m] [-stdin] [-v]
//
// Exit status 3: the peers are not installed (make tools).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hikube/ferry/internal/testpeer/cdi"
	"github.com/hikube/ferry/internal/testpeer/kube"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

func main() {
	dir := flag.String("dir", "", "where the fake CDI writes received images (default: a temp dir, removed on exit)")
	ttl := flag.Duration("token-ttl", 0, "upload token lifetime (default: CDI's 5m)")
	stdin := flag.Bool("stdin", false, "also exit when stdin closes (run by a parent)")
	verbose := flag.Bool("v", false, "control plane logs on stderr")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *stdin {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			stop()
		}()
	}
	if err := run(ctx, *dir, *ttl, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-testcluster:", err)
		if errors.Is(err, kube.ErrNotInstalled) {
			os.Exit(3)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, dir string, ttl time.Duration, verbose bool) error {
	var out io.Writer
	if verbose {
		out = os.Stderr
	}
	sctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	c, err := kube.Start(sctx, kube.Options{Output: out})
	if err != nil {
		return err
	}
	defer c.Stop()
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	p, err := cdi.Start(sctx, c, cdi.Options{Dir: dir, TokenTTL: ttl})
	if err != nil {
		return err
	}
	defer p.Stop()
	ca := filepath.Join(c.Dir, "cdi-uploadproxy-ca.crt")
	if err := os.WriteFile(ca, p.CA.CertPEM, 0o644); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: control(c, p), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()

	fmt.Printf("kubeconfig=%s\nnamespace=%s\nproxy=%s\nca=%s\ncontrol=http://%s\nready\n",
		c.Kubeconfig, c.Namespace, p.ProxyURL, ca, ln.Addr())
	<-ctx.Done()
	return nil
}

func control(c *kube.Cluster, p *cdi.Peer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /received", func(w http.ResponseWriter, r *http.Request) {
		u := p.Received(r.FormValue("ns"), r.FormValue("name"))
		if u == nil {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(u)
	})
	mux.HandleFunc("POST /forget", func(w http.ResponseWriter, r *http.Request) {
		ns, name := r.FormValue("ns"), r.FormValue("name")
		if u := p.Received(ns, name); u != nil && u.Path != "" {
			os.Remove(u.Path)
		}
		// The PVC stays: without a controller manager its protection
		// finalizer would keep it Terminating anyway, and it holds nothing.
		dv := &cdiv1.DataVolume{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
		if err := client.IgnoreNotFound(c.Client.Delete(r.Context(), dv)); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		// Uploads are kept by name; one caller at a time forgets them all.
		p.Reset()
	})
	return mux
}
