//go:build unix

package vhd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/internal/testutil"
)

// Benchmarks convert a ~256 MiB image made from testutil.Pattern data to
// raw in /dev/shm, with ferry (2 goroutines, 4 MiB chunks, zero extents
// skipped) and with `qemu-img convert -O raw -m 16 -W` on the same file.
// Fixtures are made on first use and removed by TestMain.

const benchSize = 256 << 20

var (
	benchMu    sync.Mutex
	benchDir   string
	benchFiles = map[string]string{}
)

func TestMain(m *testing.M) {
	code := m.Run()
	if benchDir != "" {
		os.RemoveAll(benchDir)
	}
	os.Exit(code)
}

// benchImage converts the pattern to vpc with the given -o options, once.
func benchImage(b *testing.B, opts string) string {
	b.Helper()
	testutil.Need(b, "qemu-img")
	benchMu.Lock()
	defer benchMu.Unlock()
	if p, ok := benchFiles[opts]; ok {
		return p
	}
	if benchDir == "" {
		d, err := os.MkdirTemp("", "ferry-bench-vhd-")
		if err != nil {
			b.Fatal(err)
		}
		benchDir = d
	}
	raw := filepath.Join(benchDir, "src.raw")
	if _, err := os.Stat(raw); err != nil {
		testutil.Pattern(b, raw, benchSize, 1)
	}
	p := filepath.Join(benchDir, "img-"+opts)
	args := []string{"convert", "-f", "raw", "-O", "vpc"}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	testutil.QemuImg(b, append(args, raw, p)...)
	benchFiles[opts] = p
	return p
}

func shmOut(b *testing.B) string {
	if st, err := os.Stat("/dev/shm"); err != nil || !st.IsDir() {
		b.Skip("no /dev/shm")
	}
	return filepath.Join("/dev/shm", "ferry-bench-vhd.raw")
}

// ferryConvert converts path to out with two workers.
func ferryConvert(b *testing.B, path, out string) {
	f, err := format.OpenFile(path)
	if err != nil {
		b.Fatal(err)
	}
	img, err := Open(f, format.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	dst, err := os.Create(out)
	if err != nil {
		b.Fatal(err)
	}
	defer dst.Close()
	size := img.Size()
	if err := dst.Truncate(size); err != nil {
		b.Fatal(err)
	}
	const chunk = 4 << 20
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 2)
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
				end := min(size, off+chunk)
				for pos := off; pos < end; {
					e, err := img.Extent(pos, end-pos)
					if err != nil {
						errs <- err
						return
					}
					if !e.Zero {
						n := e.Length
						if _, err := img.ReadAt(buf[:n], pos); err != nil {
							errs <- err
							return
						}
						if err := writeNonZero(dst, buf[:n], pos); err != nil {
							errs <- err
							return
						}
					}
					pos += e.Length
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
}

var zero4k = make([]byte, 4096)

// writeNonZero writes b at off except its all-zero 4 KiB blocks, as the
// convert engine and qemu-img (-S 4k) do: the target is sparse.
func writeNonZero(dst *os.File, b []byte, off int64) error {
	for i := 0; i < len(b); {
		j := i
		for j < len(b) && !bytes.Equal(b[j:min(j+4096, len(b))], zero4k[:min(4096, len(b)-j)]) {
			j += 4096
		}
		j = min(j, len(b))
		if j > i {
			if _, err := dst.WriteAt(b[i:j], off+int64(i)); err != nil {
				return err
			}
		}
		i = j + 4096
	}
	return nil
}

// ferryRead reads the whole image with two workers, no output: the
// reader's own cost.
func ferryRead(b *testing.B, path string) {
	f, err := format.OpenFile(path)
	if err != nil {
		b.Fatal(err)
	}
	img, err := Open(f, format.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	size := img.Size()
	const chunk = 4 << 20
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

func benchRead(b *testing.B, opts string) {
	path := benchImage(b, opts)
	b.SetBytes(benchSize)
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		ferryRead(b, path)
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/1e6, "cpu-ms/op")
}

// cpuTime is the user+system time of this process so far: wall time on a
// shared machine says more about the neighbours than about the code.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchFerry(b *testing.B, opts string) {
	path := benchImage(b, opts)
	out := shmOut(b)
	defer os.Remove(out)
	b.SetBytes(benchSize)
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		ferryConvert(b, path, out)
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/1e6, "cpu-ms/op")
}

func benchQemu(b *testing.B, opts string) {
	path := benchImage(b, opts)
	out := shmOut(b)
	defer os.Remove(out)
	b.SetBytes(benchSize)
	b.ResetTimer()
	var cpu time.Duration
	for range b.N {
		cmd := exec.Command("qemu-img", "convert", "-f", "vpc", "-O", "raw", "-m", "16", "-W", path, out)
		if o, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("qemu-img: %v\n%s", err, o)
		}
		cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	b.ReportMetric(float64(cpu)/float64(b.N)/1e6, "cpu-ms/op")
}

func BenchmarkReadDynamic(b *testing.B)         { benchRead(b, "subformat=dynamic") }
func BenchmarkConvertDynamicFerry(b *testing.B) { benchFerry(b, "subformat=dynamic") }
func BenchmarkConvertDynamicQemu(b *testing.B)  { benchQemu(b, "subformat=dynamic") }
func BenchmarkReadFixed(b *testing.B)           { benchRead(b, "subformat=fixed") }
func BenchmarkConvertFixedFerry(b *testing.B)   { benchFerry(b, "subformat=fixed") }
func BenchmarkConvertFixedQemu(b *testing.B)    { benchQemu(b, "subformat=fixed") }
