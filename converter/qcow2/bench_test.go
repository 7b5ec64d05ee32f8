package qcow2

import (
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hikube/ferry/internal/testutil"
)

// BenchmarkReadAll reads a 256 MiB image (testutil.Pattern content: a
// quarter random, half compressible, a quarter holes) with 2 goroutines and
// 4 MiB buffers, like the convert engine. Set FERRY_BENCH_KEEP=dir to keep
// the images for comparing with `qemu-img convert -O raw -m 16 -W`.
func BenchmarkReadAll(b *testing.B) {
	testutil.Need(b, "qemu-img")
	dir := os.Getenv("FERRY_BENCH_KEEP")
	if dir == "" {
		dir = b.TempDir()
	}
	raw := filepath.Join(dir, "bench.raw")
	if _, err := os.Stat(raw); err != nil {
		testutil.Pattern(b, raw, 256<<20, 42)
	}
	for _, v := range []struct{ name, opts string }{
		{"plain", ""},
		{"zlib", "-c"},
		{"zstd", "-c -o compression_type=zstd"},
	} {
		p := filepath.Join(dir, "bench-"+v.name+".qcow2")
		if _, err := os.Stat(p); err != nil {
			switch v.name {
			case "plain":
				toQcow2(b, raw, p, "")
			case "zlib":
				toQcow2(b, raw, p, "", "-c")
			case "zstd":
				toQcow2(b, raw, p, "compression_type=zstd", "-c")
			}
		}
		b.Run(v.name, func(b *testing.B) {
			img := mustOpen(b, p)
			size := img.Size()
			const chunk = 4 << 20
			b.SetBytes(size)
			// CPU time is reported too: wall time is noisy on a shared
			// machine, and qemu-img's user+sys is the fair comparison.
			cpu0 := cpuTime()
			b.ResetTimer()
			for range b.N {
				var next atomic.Int64
				var wg sync.WaitGroup
				for range 2 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						buf := make([]byte, chunk)
						for {
							off := next.Add(chunk) - chunk
							if off >= size {
								return
							}
							if _, err := img.ReadAt(buf, off); err != nil && off+chunk < size {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-cpu0).Milliseconds())/float64(b.N), "cpu-ms/op")
		})
	}
}

// cpuTime is the user+sys time of this process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
