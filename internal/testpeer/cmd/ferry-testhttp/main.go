// Command ferry-testhttp serves a directory over HTTP on 127.0.0.1 with
// Range support, for benchmarks: the same server the tests use, without
// faults unless asked. GET /_stats returns {"requests":N,"bytes":N} (body
// bytes served); POST /_reset zeroes them.
//
//	ferry-testhttp -dir DIR [-addr 127.0.0.1:8080] [-no-range] [-rate BYTES/S]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hikube/ferry/internal/testpeer/httpserver"
)

func main() {
	dir := flag.String("dir", ".", "directory to serve")
	addr := flag.String("addr", "127.0.0.1:8080", "listen address (loopback only)")
	noRange := flag.Bool("no-range", false, "ignore Range requests (200 with the whole body)")
	rate := flag.Int64("rate", 0, "cap each response at this many bytes per second")
	flag.Parse()

	host, _, err := net.SplitHostPort(*addr)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		fmt.Fprintln(os.Stderr, "ferry-testhttp: -addr must be a loopback address")
		os.Exit(2)
	}
	h := httpserver.NewHandler(*dir)
	if *noRange || *rate > 0 {
		h.Fault("", httpserver.Fault{NoRange: *noRange, Rate: *rate})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_stats", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]int64{"requests": h.Requests(), "bytes": h.BytesServed()})
	})
	mux.HandleFunc("POST /_reset", func(w http.ResponseWriter, r *http.Request) {
		h.ResetStats()
	})
	mux.Handle("/", h)
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ferry-testhttp:", err)
		os.Exit(1)
	}
	fmt.Printf("http://%s\n", ln.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "ferry-testhttp:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "ferry-testhttp: %d requests, %d bytes served\n", h.Requests(), h.BytesServed())
}
