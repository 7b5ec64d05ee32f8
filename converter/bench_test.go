//go:build unix

package converter_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hikube/ferry/converter"
	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/internal/testutil"
)

// Micro-benchmarks of every reader: a 256 MiB image of testutil.Pattern
// data (a quarter random, half compressible, a quarter holes), made by
// qemu-img in each format and subformat. For each: Read (the reader alone,
// 2 goroutines reading 4 MiB chunks in order), Ferry (converter.Convert to
// /dev/shm) and Qemu (`qemu-img convert -O raw -m 16 -W` of the same file
// to the same place). CPU time is reported too: wall time on a shared
// machine says more about the neighbours. The end-to-end comparison on a
// large corpus is `make bench`.
//
//	go test -tags libdeflate -run '^$' -bench . ./converter/

const benchSize = 256 << 20

var benchFormats = []struct {
	name, qemuFmt string
	args          []string
}{
	{"qcow2", "qcow2", nil},
	{"qcow2-zlib", "qcow2", []string{"-c"}},
	{"qcow2-zstd", "qcow2", []string{"-c", "-o", "compression_type=zstd"}},
	{"vmdk-sparse", "vmdk", nil},
	{"vmdk-stream", "vmdk", []string{"-o", "subformat=streamOptimized"}},
	{"vhd-dynamic", "vpc", nil},
	{"vhd-fixed", "vpc", []string{"-o", "subformat=fixed"}},
	{"vhdx", "vhdx", nil},
	{"vdi-dynamic", "vdi", nil},
	{"vdi-static", "vdi", []string{"-o", "static=on"}},
}

var (
	benchOnce sync.Once
	benchDir  string
	benchErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if benchDir != "" {
		os.RemoveAll(benchDir)
	}
	os.Exit(code)
}

// benchImage returns the image of format i, making the corpus on first use.
func benchImage(b *testing.B, i int) string {
	b.Helper()
	testutil.Need(b, "qemu-img")
	benchOnce.Do(func() {
		if benchDir, benchErr = os.MkdirTemp("", "ferry-bench-"); benchErr != nil {
			return
		}
		raw := filepath.Join(benchDir, "src.raw")
		testutil.Pattern(b, raw, benchSize, 1)
		for _, f := range benchFormats {
			args := append(append([]string{"convert", "-q", "-f", "raw", "-O", f.qemuFmt}, f.args...), raw, filepath.Join(benchDir, f.name))
			if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
				benchErr = fmt.Errorf("qemu-img %v: %v: %s", args, err, out)
				return
			}
		}
	})
	if benchErr != nil {
		b.Fatalf("making the corpus: %v", benchErr)
	}
	return filepath.Join(benchDir, benchFormats[i].name)
}

func openBench(b *testing.B, path string) format.Image {
	f, err := format.OpenFile(path)
	if err != nil {
		b.Fatal(err)
	}
	img, err := converter.Open(f, converter.OpenOptions{NoReferences: true})
	if err != nil {
		b.Fatal(err)
	}
	return img
}

func shmOut(b *testing.B) string {
	if st, err := os.Stat("/dev/shm"); err != nil || !st.IsDir() {
		b.Skip("no /dev/shm")
	}
	return filepath.Join("/dev/shm", "ferry-bench.raw")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkFormats(b *testing.B) {
	for i, f := range benchFormats {
		b.Run(f.name+"/Read", func(b *testing.B) {
			img := openBench(b, benchImage(b, i))
			defer img.Close()
			b.SetBytes(benchSize)
			cpu0 := cpuTime()
			b.ResetTimer()
			for range b.N {
				readAll(b, img)
			}
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/1e6, "cpu-ms/op")
		})
		b.Run(f.name+"/Ferry", func(b *testing.B) {
			path, out := benchImage(b, i), shmOut(b)
			defer os.Remove(out)
			b.SetBytes(benchSize)
			cpu0 := cpuTime()
			b.ResetTimer()
			for range b.N {
				img := openBench(b, path)
				dst, err := os.Create(out)
				if err == nil {
					err = dst.Truncate(img.Size())
				}
				if err == nil {
					_, err = converter.Convert(context.Background(), img, converter.Options{WriterAt: dst, Workers: 2})
				}
				dst.Close()
				img.Close()
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/1e6, "cpu-ms/op")
		})
		b.Run(f.name+"/Qemu", func(b *testing.B) {
			path, out := benchImage(b, i), shmOut(b)
			defer os.Remove(out)
			b.SetBytes(benchSize)
			var cpu time.Duration
			b.ResetTimer()
			for range b.N {
				cmd := exec.Command("qemu-img", "convert", "-f", f.qemuFmt, "-O", "raw", "-m", "16", "-W", path, out)
				if o, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("qemu-img: %v\n%s", err, o)
				}
				cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			}
			b.ReportMetric(float64(cpu)/float64(b.N)/1e6, "cpu-ms/op")
		})
	}
}

// readAll reads img with two goroutines taking 4 MiB chunks in order.
func readAll(b *testing.B, img format.Image) {
	const chunk = 4 << 20
	size := img.Size()
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
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
				if _, err := img.ReadAt(buf[:min(chunk, size-off)], off); err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		b.Fatal(err)
	}
}
