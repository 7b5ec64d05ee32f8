package importer

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/hikube/ferry/internal/testpeer/httpserver"
)

// TestThroughput measures reading a large file through Source over
// loopback against curl. Run with FERRY_BENCH_MB=1024 (skipped otherwise).
func TestThroughput(t *testing.T) {
	mb, _ := strconv.Atoi(os.Getenv("FERRY_BENCH_MB"))
	if mb == 0 {
		t.Skip("set FERRY_BENCH_MB to run")
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "big.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for i := 0; i < mb; i++ {
		buf[0] = byte(i)
		f.Write(buf)
	}
	f.Close()
	srv := httpserver.Start(t, dir)
	url := srv.URL + "/big.img"
	size := int64(mb) << 20

	if curl, err := exec.LookPath("curl"); err == nil {
		start := time.Now()
		if out, err := exec.Command(curl, "-sS", "-o", "/dev/null", url).CombinedOutput(); err != nil {
			t.Fatalf("curl: %v %s", err, out)
		}
		d := time.Since(start)
		t.Logf("curl -o /dev/null: %v, %.0f MB/s", d, float64(size)/d.Seconds()/1e6)
	}
	connsList, algs := []int{1, 4}, []string{"", "sha256", "sha512"}
	if os.Getenv("FERRY_BENCH_QUICK") != "" {
		connsList, algs = []int{4}, []string{"sha256"}
	}
	for _, conns := range connsList {
		for _, alg := range algs {
			srv.ResetStats()
			o := Options{Connections: conns}
			if alg != "" {
				o.Checksum = alg + ":" + zeros(hexLen[alg])
			}
			var ms runtime.MemStats
			start := time.Now()
			s, err := Open(context.Background(), url, o)
			if err != nil {
				t.Fatal(err)
			}
			// Read in order with 4 workers and 4 MiB reads, like the
			// convert engine, then Complete.
			readAllInOrderDiscard(t, s, 4, 4<<20)
			_, err = s.Complete(context.Background())
			d := time.Since(start)
			runtime.ReadMemStats(&ms)
			s.Close()
			if alg != "" && err == nil {
				t.Fatal("checksum of zeros matched")
			}
			t.Logf("Source conns=%d checksum=%-6s: %v, %.0f MB/s, served %.4f× the size, %d requests, heap sys %d MiB",
				conns, alg, d.Round(time.Millisecond), float64(size)/d.Seconds()/1e6, float64(srv.BytesServed())/float64(size), srv.Requests(), ms.HeapSys>>20)
		}
	}
}

func zeros(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = '0'
	}
	return string(b)
}

func readAllInOrderDiscard(t testing.TB, src Source, workers int, chunk int) {
	t.Helper()
	next := make(chan int64)
	go func() {
		for off := int64(0); off < src.Size(); off += int64(chunk) {
			next <- off
		}
		close(next)
	}()
	errs := make(chan error, workers)
	for range workers {
		go func() {
			buf := make([]byte, chunk)
			for off := range next {
				n := min(int64(chunk), src.Size()-off)
				if _, err := src.ReadAt(buf[:n], off); err != nil {
					errs <- err
					for range next {
					}
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
