//go:build unix

package vhdx

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hikube/ferry/internal/testutil"
)

// BenchmarkConvert compares reading a 256 MiB image into a RAW file on
// /dev/shm, with 2 workers and 2 MiB chunks as the convert engine does,
// against `qemu-img convert -O raw -m 16 -W` of the same image:
//
//	go test -run '^$' -bench Convert -benchtime 5x ./converter/vhdx/
func BenchmarkConvert(b *testing.B) {
	testutil.Need(b, "qemu-img")
	const size = 256 << 20
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	testutil.Pattern(b, src, size, 1)
	shm := os.TempDir()
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		shm = "/dev/shm"
	}
	out := filepath.Join(shm, "ferry-vhdx-bench.raw")
	defer os.Remove(out)

	for _, bs := range []string{"1M", "32M"} {
		img := filepath.Join(dir, "img-"+bs+".vhdx")
		testutil.QemuImg(b, "convert", "-f", "raw", "-O", "vhdx", "-o", "block_size="+bs, src, img)

		b.Run("ferry-read/block="+bs, func(b *testing.B) {
			im := mustOpen(b, img)
			b.SetBytes(size)
			defer cpuMetric(b, syscall.RUSAGE_SELF)()
			for b.Loop() {
				run2(b, im, nil)
			}
		})
		b.Run("ferry-convert/block="+bs, func(b *testing.B) {
			im := mustOpen(b, img)
			b.SetBytes(size)
			defer cpuMetric(b, syscall.RUSAGE_SELF)()
			for b.Loop() {
				os.Remove(out)
				w, err := os.Create(out)
				if err != nil {
					b.Fatal(err)
				}
				if err := w.Truncate(size); err != nil {
					b.Fatal(err)
				}
				run2(b, im, w)
				w.Close()
			}
		})
		b.Run("qemu-img/block="+bs, func(b *testing.B) {
			b.SetBytes(size)
			defer cpuMetric(b, syscall.RUSAGE_CHILDREN)()
			for b.Loop() {
				os.Remove(out)
				if o, err := exec.Command("qemu-img", "convert", "-f", "vhdx", "-O", "raw", "-m", "16", "-W", img, out).CombinedOutput(); err != nil {
					b.Fatalf("qemu-img: %v %s", err, o)
				}
			}
		})
	}
}

// run2 reads the allocated extents of im with 2 workers in 2 MiB chunks
// and writes them to w when w is not nil, skipping zero 4 KiB blocks as
// the convert engine and qemu-img (-S 4k) do.
func run2(b *testing.B, im *Image, w *os.File) {
	const chunk = 2 << 20
	type job struct{ off, n int64 }
	jobs := make(chan job, 16)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, chunk)
			for j := range jobs {
				p := buf[:j.n]
				if _, err := im.ReadAt(p, j.off); err != nil {
					b.Error(err)
					return
				}
				if w != nil {
					if err := writeNonZero(w, p, j.off); err != nil {
						b.Error(err)
						return
					}
				}
			}
		}()
	}
	size := im.Size()
	for off := int64(0); off < size; {
		e, err := im.Extent(off, size-off)
		if err != nil {
			b.Fatal(err)
		}
		if !e.Zero {
			for o := e.Start; o < e.Start+e.Length; o += chunk {
				jobs <- job{o, min(chunk, e.Start+e.Length-o)}
			}
		}
		off += e.Length
	}
	close(jobs)
	wg.Wait()
}

var zero4k [4096]byte

func writeNonZero(w *os.File, p []byte, off int64) error {
	for i := 0; i < len(p); {
		n := min(4096, len(p)-i)
		if bytes.Equal(p[i:i+n], zero4k[:n]) {
			i += n
			continue
		}
		j := i + n
		for j < len(p) {
			m := min(4096, len(p)-j)
			if bytes.Equal(p[j:j+m], zero4k[:m]) {
				break
			}
			j += m
		}
		if _, err := w.WriteAt(p[i:j], off+int64(i)); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// cpuMetric reports the CPU time (user+system) per operation, which a busy
// machine disturbs less than wall time.
func cpuMetric(b *testing.B, who int) func() {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(who, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	return func() {
		b.ReportMetric(float64(cpu()-start)/float64(b.N)/1e6, "cpu-ms/op")
	}
}
