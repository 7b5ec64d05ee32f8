// Command bench runs ferry and the reference tools side by side on one
// generated corpus and prints times, ratios and ferry's peak RSS. It is
// `make bench`; it is not a test: targets are read off its table.
//
// The corpus is deterministic: an 8 GiB-virtual disk with about 3 GiB of
// mixed data (random, compressible text, zero gaps), converted by qemu-img
// into every format. It is cached in -dir with a stamp; -size shrinks it
// for a quick look.
//
// Suites: convert (local files), http and s3 (remote sources), import
// (into a DataVolume through internal/testpeer/cmd/ferry-testcluster: a
// real kube-apiserver and the fake CDI).
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

type variant struct {
	name string
	file string
	args []string // qemu-img convert arguments to make it from base.raw
	fmt  string   // qemu-img -f name
}

var variants = []variant{
	{"qcow2", "img.qcow2", []string{"-O", "qcow2"}, "qcow2"},
	{"qcow2-zlib", "img-zlib.qcow2", []string{"-O", "qcow2", "-c", "-o", "compression_type=zlib"}, "qcow2"},
	{"qcow2-zstd", "img-zstd.qcow2", []string{"-O", "qcow2", "-c", "-o", "compression_type=zstd"}, "qcow2"},
	{"vmdk-stream", "img-stream.vmdk", []string{"-O", "vmdk", "-o", "subformat=streamOptimized"}, "vmdk"},
	{"vmdk-sparse", "img-sparse.vmdk", []string{"-O", "vmdk", "-o", "subformat=monolithicSparse"}, "vmdk"},
	{"vhdx", "img.vhdx", []string{"-O", "vhdx"}, "vhdx"},
	{"vhd", "img.vhd", []string{"-O", "vpc"}, "vpc"},
	{"vdi", "img.vdi", []string{"-O", "vdi"}, "vdi"},
}

func main() {
	dir := flag.String("dir", ".cache/bench", "corpus and output directory (on a real disk, not tmpfs)")
	size := flag.Int64("size", 8<<30, "virtual size of the generated disk")
	data := flag.Int64("data", 3<<30, "approximate bytes of data in it")
	runs := flag.Int("runs", 3, "runs per tool and format (median reported)")
	ferry := flag.String("ferry", "bin/ferry", "ferry binary")
	only := flag.String("only", "", "comma-separated variants to run (default: all)")
	prepare := flag.Bool("prepare", false, "only generate the corpus")
	suites := flag.String("suite", "convert,http,s3,import", "suites to run: convert (local files), http (loopback server vs curl+qemu-img and nbdkit), s3 (MinIO), import (to a DataVolume through the fake CDI vs convert and curl+qemu-img+curl)")
	flag.Parse()

	must(os.MkdirAll(*dir, 0o755))
	abs, _ := filepath.Abs(*dir)
	*dir = abs
	fb, err := filepath.Abs(*ferry)
	must(err)
	*ferry = fb

	stamp := fmt.Sprintf("v1 size=%d data=%d", *size, *data)
	base := filepath.Join(*dir, "base.raw")
	if b, _ := os.ReadFile(filepath.Join(*dir, "stamp")); string(b) != stamp {
		logf("generating corpus in %s (%s)", *dir, stamp)
		for _, v := range variants {
			os.Remove(filepath.Join(*dir, v.file))
		}
		generate(base, *size, *data)
		must(os.WriteFile(filepath.Join(*dir, "stamp"), []byte(stamp), 0o644))
	}
	var sel []variant
	for _, v := range variants {
		if *only == "" || strings.Contains(","+*only+",", ","+v.name+",") {
			sel = append(sel, v)
		}
	}
	for _, v := range sel {
		p := filepath.Join(*dir, v.file)
		if _, err := os.Stat(p); err == nil {
			continue
		}
		logf("making %s with qemu-img", v.name)
		t := time.Now()
		args := append([]string{"convert", "-f", "raw"}, v.args...)
		run("qemu-img", append(args, base, p+".tmp")...)
		must(os.Rename(p+".tmp", p))
		logf("  %s: %s in %v", v.name, humanSize(fileSize(p)), time.Since(t).Round(time.Second))
	}

	if *prepare {
		return
	}
	has := func(s string) bool { return strings.Contains(","+*suites+",", ","+s+",") }
	if has("convert") {
		convertSuite(*dir, *ferry, sel, *runs, *size, *data)
	}
	// Remote suites take the formats images are published in, unless told.
	var remote []variant
	for _, v := range sel {
		if *only != "" || v.name == "qcow2" || v.name == "qcow2-zlib" || v.name == "vmdk-stream" {
			remote = append(remote, v)
		}
	}
	if has("http") || has("s3") {
		remoteSuite(*dir, *ferry, remote, *runs, has("s3"))
	}
	if has("import") {
		importSuite(*dir, *ferry, remote, *runs)
	}
}

func convertSuite(dir, ferry string, sel []variant, runs int, size, data int64) {
	host, _ := os.Hostname()
	fmt.Printf("\nferry convert vs qemu-img convert -O raw -m 16 -W (both flushed to disk; warm cache; median of %d)\n", runs)
	fmt.Printf("host %s, %d CPUs, corpus %s virtual, %s data\n\n", host, numCPU(), humanSize(size), humanSize(data))
	fmt.Printf("%-12s %9s %10s %9s %7s %14s %10s %9s\n", "format", "file", "qemu-img", "ferry", "ratio", "ferry+sha256", "ratio", "peak RSS")
	out := filepath.Join(dir, "out.raw")
	for _, v := range sel {
		src := filepath.Join(dir, v.file)
		warm(src)
		q := median(runs, func() (time.Duration, int64) {
			os.Remove(out)
			return timed("sh", "-c", fmt.Sprintf("qemu-img convert -f %s -O raw -m 16 -W %q %q && sync %q", v.fmt, src, out, out))
		})
		var rss int64
		f := median(runs, func() (time.Duration, int64) {
			os.Remove(out)
			d, r := timed(ferry, "convert", "-q", src, out)
			rss = max(rss, r)
			return d, r
		})
		fd := median(runs, func() (time.Duration, int64) {
			os.Remove(out)
			d, r := timed(ferry, "convert", "-q", "--digest", src, out)
			rss = max(rss, r)
			return d, r
		})
		fmt.Printf("%-12s %9s %9.2fs %8.2fs %7.2f %13.2fs %10.2f %8s\n", v.name, humanSize(fileSize(src)),
			q.Seconds(), f.Seconds(), f.Seconds()/q.Seconds(), fd.Seconds(), fd.Seconds()/q.Seconds(), humanSize(rss*1024))
		os.Remove(out)
	}

	// A 1 TiB qcow2 with nothing allocated: mapped, never read.
	empty := filepath.Join(dir, "empty-1t.qcow2")
	if _, err := os.Stat(empty); err != nil {
		run("qemu-img", "create", "-q", "-f", "qcow2", empty, "1T")
	}
	q := median(runs, func() (time.Duration, int64) {
		os.Remove(out)
		return timed("sh", "-c", fmt.Sprintf("qemu-img convert -O raw -m 16 -W %q %q && sync %q", empty, out, out))
	})
	f := median(runs, func() (time.Duration, int64) {
		os.Remove(out)
		return timed(ferry, "convert", "-q", empty, out)
	})
	fmt.Printf("%-12s %9s %9.2fs %8.3fs %7.2f %14s %10s %9s\n", "qcow2-1T-empty", humanSize(fileSize(empty)), q.Seconds(), f.Seconds(), f.Seconds()/q.Seconds(), "-", "-", "-")
	os.Remove(out)
	fmt.Println("\nratio = ferry / qemu-img (targets: ≤ 0.80; ≤ 0.50 for vmdk-stream; 1 TiB empty < 0.2 s)")
}

// generate writes a deterministic sparse disk: runs of random data,
// compressible text and holes, about data bytes of data in size.
func generate(path string, size, data int64) {
	f, err := os.Create(path)
	must(err)
	defer f.Close()
	must(f.Truncate(size))
	rng := rand.New(rand.NewPCG(42, 1))
	buf := make([]byte, 8<<20)
	pFill := float64(data) / float64(size)
	var written int64
	for off := int64(0); off < size; {
		n := int64(64<<10) * (1 + rng.Int64N(128)) // 64 KiB .. 8 MiB
		n = min(n, size-off)
		if rng.Float64() < pFill {
			b := buf[:n]
			switch rng.IntN(3) {
			case 0: // incompressible
				for i := 0; i+8 <= len(b); i += 8 {
					v := rng.Uint64()
					b[i], b[i+1], b[i+2], b[i+3], b[i+4], b[i+5], b[i+6], b[i+7] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24), byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56)
				}
			case 1: // text-like, compresses ~4x
				words := []string{"kernel", "disk", "ferry", "cluster", "replicated", "volume", "boot", "init", "0x3f", "\n"}
				p := 0
				for p < len(b) {
					w := words[rng.IntN(len(words))]
					p += copy(b[p:], w)
					if p < len(b) {
						b[p] = ' '
						p++
					}
				}
			default: // binary with structure: sparse-ish, compresses well
				clear(b)
				for i := 0; i < len(b); i += 512 {
					b[i] = byte(rng.IntN(256))
					b[i+1] = byte(i >> 9)
				}
			}
			_, err := f.WriteAt(b, off)
			must(err)
			written += n
		}
		off += n
	}
	must(f.Sync())
	logf("  base.raw: %s virtual, %s data", humanSize(size), humanSize(written))
}

func warm(path string) {
	f, err := os.Open(path)
	must(err)
	defer f.Close()
	buf := make([]byte, 8<<20)
	for {
		if _, err := f.Read(buf); err != nil {
			return
		}
	}
}

func timed(name string, args ...string) (time.Duration, int64) {
	return timedCmd(exec.Command(name, args...))
}

// timedCmd runs cmd, exiting on failure, and returns its wall time and
// peak RSS (KiB).
func timedCmd(cmd *exec.Cmd) (time.Duration, int64) {
	cmd.Stderr = os.Stderr
	t := time.Now()
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %s: %v\n", strings.Join(cmd.Args, " "), err)
		os.Exit(1)
	}
	d := time.Since(t)
	var rss int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = ru.Maxrss
	}
	return d, rss
}

func median(n int, f func() (time.Duration, int64)) time.Duration {
	var ds []time.Duration
	for i := 0; i < n; i++ {
		d, _ := f()
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2]
}

func run(name string, args ...string) {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %s %s: %v\n", name, strings.Join(args, " "), err)
		os.Exit(1)
	}
}

func fileSize(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.Size()
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2fG", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0fM", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0fK", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}

func logf(f string, a ...any) { fmt.Fprintf(os.Stderr, "bench: "+f+"\n", a...) }

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
