package importer

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
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
	var served func() int64
	var reset func()
	url := ""
	if ext := os.Getenv("FERRY_BENCH_SERVER"); ext != "" {
		// A ferry-testhttp in its own process, serving dir: the server
		// does not share the Go scheduler with the client.
		cmd := exec.Command(ext, "-dir", dir, "-addr", "127.0.0.1:0")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		base := strings.TrimSpace(line)
		url = base + "/big.img"
		served = func() int64 {
			resp, err := http.Get(base + "/_stats")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var st struct{ Bytes int64 }
			json.NewDecoder(resp.Body).Decode(&st)
			return st.Bytes
		}
		reset = func() {
			resp, err := http.Post(base+"/_reset", "", nil)
			if err == nil {
				resp.Body.Close()
			}
		}
	} else {
		srv := httpserver.Start(t, dir)
		url = srv.URL + "/big.img"
		served, reset = srv.BytesServed, srv.ResetStats
	}
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
		connsList, algs = []int{4}, []string{os.Getenv("FERRY_BENCH_QUICK")}
		if algs[0] == "none" {
			algs[0] = ""
		}
	}
	for _, conns := range connsList {
		for _, alg := range algs {
			reset()
			o := Options{Connections: conns}
			if v, _ := strconv.ParseInt(os.Getenv("FERRY_BENCH_BS"), 10, 64); v > 0 {
				o.BlockSize = v << 20
			}
			if v, _ := strconv.ParseInt(os.Getenv("FERRY_BENCH_CACHE"), 10, 64); v > 0 {
				o.CacheSize = v << 20
			}
			if alg != "" {
				o.Checksum = alg + ":" + zeros(hexLen[alg])
			}
			var ms runtime.MemStats
			cpu0 := cpuTime()
			start := time.Now()
			s, err := Open(context.Background(), url, o)
			if err != nil {
				t.Fatal(err)
			}
			// Read in order with 4 workers and 4 MiB reads, like the
			// convert engine, then Complete.
			readAllInOrderDiscard(t, s, 4, 4<<20)
			d2, err := s.Complete(context.Background())
			d := time.Since(start)
			cpu := cpuTime() - cpu0
			runtime.ReadMemStats(&ms)
			s.Close()
			if alg != "" && err == nil {
				t.Fatal("checksum of zeros matched")
			}
			t.Logf("Source conns=%d checksum=%-6s: %v, %.0f MB/s, cpu %.2fs/GiB, served %.4f× the size, %d requests, heap sys %d MiB",
				conns, alg, d.Round(time.Millisecond), float64(size)/d.Seconds()/1e6, cpu.Seconds()/(float64(size)/(1<<30)), float64(served())/float64(size), d2.Requests, ms.HeapSys>>20)
		}
	}
}

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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
