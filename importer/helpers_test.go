package importer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hikube/ferry/internal/testpeer/httpserver"
)

// testOptions are small and fast: 512 KiB blocks, a 16 MiB cache (4 times
// the spread of the simulated converter's reads, like the defaults), quick
// retries.
func testOptions() Options {
	return Options{
		Connections:   4,
		BlockSize:     512 << 10,
		CacheSize:     32 << 20,
		Timeout:       10 * time.Second,
		retryBase:     time.Millisecond,
		retryAfterMax: 20 * time.Millisecond,
	}
}

// randomFile writes size random bytes to dir/name and returns the path and
// the data.
func randomFile(t testing.TB, dir, name string, size int, seed int64) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	rand.New(rand.NewSource(seed)).Read(data)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, data
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// serve starts the test HTTP server on a new directory holding one random
// file; it returns the server, the file's URL and its data.
func serve(t testing.TB, size int) (*httpserver.Server, string, []byte) {
	t.Helper()
	dir := t.TempDir()
	_, data := randomFile(t, dir, "disk.img", size, int64(size))
	srv := httpserver.Start(t, dir)
	return srv, srv.URL + "/disk.img", data
}

// readAllInOrder reads src the way the convert engine does: workers take
// consecutive chunks of chunk bytes in order.
func readAllInOrder(t testing.TB, src Source, workers int, chunk int) []byte {
	t.Helper()
	out := make([]byte, src.Size())
	var mu sync.Mutex
	next := int64(0)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				off := next
				next += int64(chunk)
				mu.Unlock()
				if off >= src.Size() {
					return
				}
				end := min(off+int64(chunk), src.Size())
				n, err := src.ReadAt(out[off:end], off)
				if err != nil && !(err == io.EOF && off+int64(n) == src.Size()) {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("ReadAt: %v", err)
	}
	return out
}

// checkNoLeak fails if goroutines of this package are still running a
// moment after the test's sources were closed.
func checkNoLeak(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		stacks := string(buf[:n])
		var leaked []string
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "hikube/ferry/importer.(") && !strings.Contains(g, "testing.tRunner") && !strings.Contains(g, "_test.go") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines leaked:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mustOpen(t testing.TB, src string, o Options) Source {
	t.Helper()
	s, err := Open(context.Background(), src, o)
	if err != nil {
		t.Fatalf("Open(%s): %v", src, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustComplete(t testing.TB, s Source) Digests {
	t.Helper()
	d, err := s.Complete(context.Background())
	if err != nil {
		t.Fatalf("Complete: %v", err)
	}
	return d
}

func equalBytes(t testing.TB, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		for i := range min(len(got), len(want)) {
			if got[i] != want[i] {
				t.Fatalf("data differs at offset %d (len %d vs %d)", i, len(got), len(want))
			}
		}
		t.Fatalf("data lengths differ: %d vs %d", len(got), len(want))
	}
}

var faultSlow = httpserver.Fault{Rate: 2 << 20}

// logEngine logs the engine's counters.
func logEngine(t testing.TB, s Source) {
	t.Helper()
	r, ok := s.(*remote)
	if !ok {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	t.Logf("engine: %d blocks of %d, refetched %d, meta reads %d (%d bytes), unread evictions %d",
		r.nb, r.bs, r.nRefetch, r.nMeta, r.nMetaBytes, r.nEvictUnread)
}

func hexOf(b []byte) string { return hex.EncodeToString(b) }

func writeFile(t testing.TB, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readAll(t testing.TB, r io.Reader) []byte {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkOnce checks that served bytes are at most 1 % over size, plus one
// block of slack: on fixtures of a few MiB a single block re-fetched for a
// converter worker descheduled for long (2 shared cores) is over 1 %.
func checkOnce(t testing.TB, served, size, block int64) {
	t.Helper()
	ratio := float64(served) / float64(size)
	if float64(served) > 1.01*float64(size)+float64(block) {
		t.Fatalf("served %d bytes for %d: %.4f × the file size", served, size, ratio)
	}
}
