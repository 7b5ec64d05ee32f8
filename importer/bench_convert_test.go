package importer

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hikube/ferry/converter"
	"github.com/hikube/ferry/internal/testpeer/minio"
	"github.com/hikube/ferry/internal/testutil"
)

// TestBenchConvert is the fetch layer's share of the benchmark target:
// converting a qcow2 straight from HTTP (and S3) with a checksum, against
// curl downloading it then qemu-img converting it. Run with
// FERRY_BENCH_MB=1024 FERRY_BENCH_SERVER=path/to/ferry-testhttp (skipped
// otherwise).
func TestBenchConvert(t *testing.T) {
	mb, _ := strconv.Atoi(os.Getenv("FERRY_BENCH_MB"))
	ext := os.Getenv("FERRY_BENCH_SERVER")
	if mb == 0 || ext == "" {
		t.Skip("set FERRY_BENCH_MB and FERRY_BENCH_SERVER to run")
	}
	testutil.Need(t, "qemu-img")
	testutil.Need(t, "curl")
	dir := t.TempDir()
	raw := filepath.Join(dir, "src.raw")
	testutil.Pattern(t, raw, int64(mb)<<20, 1)
	img := filepath.Join(dir, "disk.qcow2")
	testutil.QemuImg(t, "convert", "-O", "qcow2", raw, img)
	os.Remove(raw)
	want, _ := testutil.ReferenceSHA256(t, img, "qcow2")
	fileSHA, size := testutil.SHA256File(t, img)
	t.Logf("qcow2 of %d MiB virtual: %d bytes", mb, size)

	base, stop := startTestHTTP(t, ext, dir)
	defer stop()
	url := base + "/disk.qcow2"
	work := t.TempDir()

	// Baseline: curl, then qemu-img convert.
	child0 := childCPU()
	start := time.Now()
	if out, err := exec.Command("curl", "-sS", "-o", filepath.Join(work, "dl.qcow2"), url).CombinedOutput(); err != nil {
		t.Fatalf("curl: %v %s", err, out)
	}
	dl := time.Since(start)
	testutil.QemuImg(t, "convert", "-O", "raw", filepath.Join(work, "dl.qcow2"), filepath.Join(work, "base.raw"))
	baseline := time.Since(start)
	os.Remove(filepath.Join(work, "dl.qcow2"))
	os.Remove(filepath.Join(work, "base.raw"))
	t.Logf("curl + qemu-img convert: %v (download %v), cpu %.2fs", baseline.Round(time.Millisecond), dl.Round(time.Millisecond), (childCPU() - child0).Seconds())

	hwm0 := vmHWM()
	digest := os.Getenv("FERRY_BENCH_NODIGEST") == ""
	convert := func(src string, o Options) time.Duration {
		t.Helper()
		o.Checksum = "sha256:" + fileSHA
		out := filepath.Join(work, "out.raw")
		cpu0 := cpuTime()
		start := time.Now()
		s, err := Open(context.Background(), src, o)
		if err != nil {
			t.Fatal(err)
		}
		im, err := converter.Open(s, converter.OpenOptions{NoReferences: true})
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(im.Size()); err != nil {
			t.Fatal(err)
		}
		res, err := converter.Convert(context.Background(), im, converter.Options{WriterAt: f, Digest: digest})
		if err != nil {
			t.Fatal(err)
		}
		d, err := s.Complete(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		el := time.Since(start)
		cpu := cpuTime() - cpu0
		im.Close()
		os.Remove(out)
		if (digest && res.RawSHA256 != want) || d.SHA256 != fileSHA {
			t.Fatalf("wrong result: raw %s want %s", res.RawSHA256, want)
		}
		t.Logf("ferry %s: %v (%.2f × baseline), cpu %.2fs, fetched %.4f × the file, %d requests, %d retries",
			strings.SplitN(src, ":", 2)[0], el.Round(time.Millisecond), el.Seconds()/baseline.Seconds(), cpu.Seconds(),
			float64(d.BytesFetched)/float64(size), d.Requests, d.Retries)
		return el
	}
	httpTime := convert(url, Options{})
	t.Logf("peak RSS %d MiB (before: %d MiB)", vmHWM()>>20, hwm0>>20)

	if bin, _ := minio.Binary(); bin != "" {
		m := minio.Start(t)
		m.Put(t, "bench", "disk.qcow2", img)
		o := Options{S3: S3Options{Endpoint: m.URL, AccessKey: m.AccessKey, SecretKey: m.SecretKey, PathStyle: true}}
		s3Time := convert("s3://bench/disk.qcow2", o)
		t.Logf("S3 / HTTP: %.2f", s3Time.Seconds()/httpTime.Seconds())
	}
}

// startTestHTTP runs ferry-testhttp serving dir in its own process.
func startTestHTTP(t *testing.T, bin, dir string) (string, func()) {
	cmd := exec.Command(bin, "-dir", dir, "-addr", "127.0.0.1:0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, _ := out.Read(buf)
	return strings.TrimSpace(string(buf[:n])), func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }
}

// childCPU is the user+system CPU time of waited-for children.
func childCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// vmHWM is the process's peak resident set size.
func vmHWM() int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
