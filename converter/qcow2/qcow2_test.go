package qcow2

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/internal/testutil"
)

const mib = 1 << 20

// variants builds each fixture in dir and returns the top image's path.
var variants = []struct {
	name  string
	build func(t *testing.T, dir string) string
}{
	{"v2-64k", func(t *testing.T, dir string) string {
		return toQcow2(t, pattern(t, dir, "a.raw", 6*mib, 1), filepath.Join(dir, "a.qcow2"), "compat=0.10")
	}},
	{"v2-discard", func(t *testing.T, dir string) string {
		p := toQcow2(t, pattern(t, dir, "a.raw", 4*mib, 2), filepath.Join(dir, "a.qcow2"), "compat=0.10,cluster_size=4k")
		qio(t, p, "discard 0 1M", "write -P 0x44 1536k 4k", "write -z 2M 64k")
		return p
	}},
	{"v3-512", func(t *testing.T, dir string) string {
		return toQcow2(t, pattern(t, dir, "a.raw", 3*mib, 3), filepath.Join(dir, "a.qcow2"), "cluster_size=512")
	}},
	{"v3-4k", func(t *testing.T, dir string) string {
		return toQcow2(t, pattern(t, dir, "a.raw", 6*mib, 4), filepath.Join(dir, "a.qcow2"), "cluster_size=4k")
	}},
	{"v3-64k", func(t *testing.T, dir string) string {
		return toQcow2(t, pattern(t, dir, "a.raw", 8*mib, 5), filepath.Join(dir, "a.qcow2"), "")
	}},
	{"v3-2M", func(t *testing.T, dir string) string {
		return toQcow2(t, pattern(t, dir, "a.raw", 9*mib, 6), filepath.Join(dir, "a.qcow2"), "cluster_size=2M")
	}},
	{"extl2-64k-writes", func(t *testing.T, dir string) string {
		p := create(t, filepath.Join(dir, "a.qcow2"), "extended_l2=on,cluster_size=64k", "4M")
		qio(t, p, "write -P 0x5a 1000 3000", "write -z 8192 4096", "write -P 0x33 65536 65536",
			"write -z 131072 65536", "write -P 7 200000 10", "write -P 8 300000 70000",
			"discard 65536 4096", "write -z -u 69632 2048", "write -P 9 4190000 4304")
		return p
	}},
	{"extl2-64k-convert", func(t *testing.T, dir string) string {
		return toQcow2(t, pattern(t, dir, "a.raw", 6*mib, 7), filepath.Join(dir, "a.qcow2"), "extended_l2=on")
	}},
	{"extl2-2M-writes", func(t *testing.T, dir string) string {
		p := create(t, filepath.Join(dir, "a.qcow2"), "extended_l2=on,cluster_size=2M", "9M")
		qio(t, p, "write -P 0x11 0 100000", "write -z 65536 65536", "write -P 0x22 2M 2M",
			"write -z 4M 2M", "write -P 0x33 6500000 123456", "discard 2M 65536", "write -P 4 9400000 37000")
		return p
	}},
	{"zlib-64k", func(t *testing.T, dir string) string {
		return toQcow2(t, pattern(t, dir, "a.raw", 8*mib, 8), filepath.Join(dir, "a.qcow2"), "", "-c")
	}},
	{"zlib-512", func(t *testing.T, dir string) string {
		return toQcow2(t, pattern(t, dir, "a.raw", 2*mib, 9), filepath.Join(dir, "a.qcow2"), "cluster_size=512", "-c")
	}},
	{"zlib-4k-v2", func(t *testing.T, dir string) string {
		return toQcow2(t, pattern(t, dir, "a.raw", 4*mib, 10), filepath.Join(dir, "a.qcow2"), "cluster_size=4k,compat=0.10", "-c")
	}},
	{"zstd-64k", func(t *testing.T, dir string) string {
		return toQcow2(t, pattern(t, dir, "a.raw", 8*mib, 11), filepath.Join(dir, "a.qcow2"), "compression_type=zstd", "-c")
	}},
	{"zstd-2M", func(t *testing.T, dir string) string {
		return toQcow2(t, pattern(t, dir, "a.raw", 9*mib, 12), filepath.Join(dir, "a.qcow2"), "compression_type=zstd,cluster_size=2M", "-c")
	}},
	{"zstd-extl2-rewritten", func(t *testing.T, dir string) string {
		p := toQcow2(t, pattern(t, dir, "a.raw", 4*mib, 13), filepath.Join(dir, "a.qcow2"), "compression_type=zstd,extended_l2=on", "-c")
		qio(t, p, "write -P 0x66 70000 5000", "write -z 1M 64k", "discard 2M 128k")
		return p
	}},
	{"prealloc-metadata", func(t *testing.T, dir string) string {
		p := create(t, filepath.Join(dir, "a.qcow2"), "preallocation=metadata", "5M")
		qio(t, p, "write -P 1 100000 300000", "write -z 2M 64k")
		return p
	}},
	{"prealloc-falloc", func(t *testing.T, dir string) string {
		p := create(t, filepath.Join(dir, "a.qcow2"), "preallocation=falloc", "5M")
		qio(t, p, "write -P 2 100000 300000", "write -z 2M 64k")
		return p
	}},
	{"prealloc-full", func(t *testing.T, dir string) string {
		p := create(t, filepath.Join(dir, "a.qcow2"), "preallocation=full,cluster_size=4k", "3M")
		qio(t, p, "write -P 3 100000 300000", "discard 1M 64k")
		return p
	}},
	{"zero-and-discard", func(t *testing.T, dir string) string {
		p := toQcow2(t, pattern(t, dir, "a.raw", 6*mib, 14), filepath.Join(dir, "a.qcow2"), "")
		qio(t, p, "write -z 0 1M", "discard 2M 1M", "write -z -u 3M 512k", "write -P 0x77 3200k 4k")
		return p
	}},
	{"chain-raw-qcow2-qcow2", func(t *testing.T, dir string) string {
		pattern(t, dir, "base.raw", 4*mib, 15) // smaller than the overlays
		mid := create(t, filepath.Join(dir, "mid.qcow2"), "", "6M", "-b", "base.raw", "-F", "raw")
		qio(t, mid, "write -P 0x21 1M 300k", "write -z 2M 64k", "write -P 0x22 4500k 100k")
		top := create(t, filepath.Join(dir, "top.qcow2"), "cluster_size=4k", "8M", "-b", "mid.qcow2", "-F", "qcow2")
		qio(t, top, "write -P 0x31 1100k 8k", "write -z 3M 256k", "discard 0 64k", "write -P 0x32 7M 12345")
		return top
	}},
	{"chain-v2-extl2-top", func(t *testing.T, dir string) string {
		base := toQcow2(t, pattern(t, dir, "base.raw", 5*mib, 16), filepath.Join(dir, "base.qcow2"), "compat=0.10", "-c")
		mid := create(t, filepath.Join(dir, "mid.qcow2"), "extended_l2=on", "5M", "-b", filepath.Base(base), "-F", "qcow2")
		qio(t, mid, "write -P 0x41 5000 3000", "write -z 70000 10000", "write -P 0x42 3M 200k")
		top := create(t, filepath.Join(dir, "top.qcow2"), "", "5M", "-b", "mid.qcow2", "-F", "qcow2")
		qio(t, top, "write -P 0x51 6000 100")
		// No backing format: the opener probes it.
		dropBackingFormat(t, top)
		return top
	}},
	{"backing-larger", func(t *testing.T, dir string) string {
		pattern(t, dir, "base.raw", 12*mib, 17)
		top := create(t, filepath.Join(dir, "top.qcow2"), "", "8M", "-b", "base.raw", "-F", "raw")
		qio(t, top, "write -P 0x61 7M 64k")
		return top
	}},
	{"odd-size", func(t *testing.T, dir string) string {
		p := create(t, filepath.Join(dir, "a.qcow2"), "", "10497005") // 10 MiB + 12345
		qio(t, p, "write -P 0x71 10400000 96512", "write -P 0x72 0 4096")
		return p
	}},
	{"odd-header-size", func(t *testing.T, dir string) string {
		// Not a multiple of 512 in the header (qemu-img never writes that):
		// qemu reads whole sectors only.
		p := create(t, filepath.Join(dir, "a.qcow2"), "", "10497024")
		qio(t, p, "write -P 0x73 10400000 96512")
		patch(t, p, 24, 10497005, 8)
		return p
	}},
	{"odd-size-compressed", func(t *testing.T, dir string) string {
		return toQcow2(t, pattern(t, dir, "a.raw", 3*mib+4608, 18), filepath.Join(dir, "a.qcow2"), "", "-c")
	}},
	{"zero-size", func(t *testing.T, dir string) string {
		return create(t, filepath.Join(dir, "a.qcow2"), "", "0")
	}},
	{"dirty-corrupt-bits", func(t *testing.T, dir string) string {
		p := toQcow2(t, pattern(t, dir, "a.raw", 2*mib, 19), filepath.Join(dir, "a.qcow2"), "lazy_refcounts=on")
		patch(t, p, 72, readBE(t, p, 72, 8)|incDirty|incCorrupt, 8)
		return p
	}},
}

func TestVariants(t *testing.T) {
	testutil.Need(t, "qemu-img")
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			dir := t.TempDir()
			checkImage(t, v.build(t, dir))
		})
	}
}

// TestSparse6G reads a 6 GiB image with data past the 2 and 4 GiB marks.
// Hashing 6 GiB of zeros twice takes a minute on a loaded 2-core machine, so
// both sides are compared by a digest of their non-zero blocks (with their
// offsets): equal digests and sizes mean equal contents.
func TestSparse6G(t *testing.T) {
	if testing.Short() {
		t.Skip("reads 6 GiB")
	}
	testutil.Need(t, "qemu-io")
	dir := t.TempDir()
	p := create(t, filepath.Join(dir, "big.qcow2"), "", "6G")
	qio(t, p, "write -P 0x81 0 64k", "write -P 0x82 2147483000 2000", "write -P 0x83 4294967000 1000000",
		"write -z 5G 1M", "write -P 0x84 6442450000 944")
	img := mustOpen(t, p)
	if want := qemuVirtualSize(t, p); img.Size() != want || want != 6<<30 {
		t.Fatalf("Size() = %d, qemu-img says %d", img.Size(), want)
	}
	ref := filepath.Join(dir, "ref.raw")
	testutil.QemuImg(t, "convert", "-O", "raw", p, ref)
	rf, err := os.Open(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	st, _ := rf.Stat()
	if st.Size() != img.Size() {
		t.Fatalf("qemu-img wrote %d bytes, Size() = %d", st.Size(), img.Size())
	}
	want := sparseDigest(t, rf, st.Size(), func(off int64) int64 {
		n, err := rf.Seek(off, 3) // SEEK_DATA: skip holes of the raw file
		if err != nil {
			return st.Size()
		}
		return n &^ (64<<10 - 1)
	})
	got := sparseDigest(t, img, img.Size(), nil)
	if got != want {
		t.Fatalf("digest %s, qemu-img convert gives %s", got, want)
	}
	n := 0
	for off := int64(0); off < img.Size(); n++ {
		e, err := img.Extent(off, img.Size()-off)
		if err != nil {
			t.Fatal(err)
		}
		off += e.Length
	}
	if n > 20 {
		t.Errorf("%d extents for 5 written ranges", n)
	}
}

// sparseDigest hashes the offset and content of every non-zero 64 KiB block.
// next, if set, returns where the next data may start (hole skipping).
func sparseDigest(t *testing.T, r io.ReaderAt, size int64, next func(int64) int64) string {
	const blk = 64 << 10
	h := sha256.New()
	buf := make([]byte, 4*mib)
	zero := make([]byte, blk)
	var ob [8]byte
	for off := int64(0); off < size; {
		if next != nil {
			off = max(off, next(off))
			if off >= size {
				break
			}
		}
		n := min(int64(len(buf)), size-off)
		if m, err := r.ReadAt(buf[:n], off); int64(m) != n {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", n, off, m, err)
		}
		for i := int64(0); i < n; i += blk {
			b := buf[i:min(n, i+blk)]
			if !bytes.Equal(b, zero[:len(b)]) {
				binary.BigEndian.PutUint64(ob[:], uint64(off+i))
				h.Write(ob[:])
				h.Write(b)
			}
		}
		off += n
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestInfo(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	pattern(t, dir, "base.raw", 2*mib, 20)
	mid := toQcow2(t, pattern(t, dir, "m.raw", 2*mib, 21), filepath.Join(dir, "mid.qcow2"), "compression_type=zstd", "-c")
	top := create(t, filepath.Join(dir, "top.qcow2"), "extended_l2=on", "4M", "-b", "mid.qcow2", "-F", "qcow2")
	qio(t, top, "write -P 1 0 4096", "write -z 65536 65536")
	testutil.QemuImg(t, "rebase", "-u", "-b", "base.raw", "-F", "raw", mid)
	in := mustOpen(t, top).Info()
	if in.Format != Type || in.Subformat != "v3" || in.VirtualSize != 4*mib || in.ClusterSize != 65536 {
		t.Fatalf("info = %+v", in)
	}
	if in.AllocatedBytes != 4096 {
		t.Errorf("AllocatedBytes = %d, want 4096 (one subcluster; zero clusters excluded)", in.AllocatedBytes)
	}
	if in.Backing != "mid.qcow2" || in.BackingFormat != "qcow2" || in.Details["extended_l2"] != true {
		t.Errorf("info = %+v", in)
	}
	b := in.BackingInfo
	if b == nil || b.Compression != "zstd" || b.Backing != "base.raw" || b.BackingFormat != "raw" || b.AllocatedBytes == 0 {
		t.Fatalf("backing info = %+v", b)
	}
	v2 := toQcow2(t, filepath.Join(dir, "base.raw"), filepath.Join(dir, "v2.qcow2"), "compat=0.10")
	if in := mustOpen(t, v2).Info(); in.Subformat != "v2" || in.Details["compat"] != "0.10" || in.Details["refcount_bits"] != 16 {
		t.Errorf("v2 info = %+v", in)
	}
}

// TestExtentEmpty1TiB: unallocated L1 entries are skipped in one step.
func TestExtentEmpty1TiB(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	base := create(t, filepath.Join(dir, "base.qcow2"), "", "1T")
	qio(t, base, "write -P 1 500G 64k")
	top := create(t, filepath.Join(dir, "top.qcow2"), "", "1T", "-b", "base.qcow2", "-F", "qcow2")
	qio(t, top, "write -P 2 100G 4k")
	for _, p := range []string{base, top} {
		img := mustOpen(t, p)
		size := img.Size()
		for round := 0; round < 2; round++ { // the second round runs with a warm cache
			t0 := time.Now()
			n := 0
			for off := int64(0); off < size; n++ {
				e, err := img.Extent(off, size-off)
				if err != nil {
					t.Fatal(err)
				}
				off += e.Length
			}
			d := time.Since(t0)
			t.Logf("%s: mapped 1 TiB in %v with %d extents", filepath.Base(p), d, n)
			if d > 50*time.Millisecond {
				t.Errorf("%s: mapping 1 TiB took %v (%d extents)", filepath.Base(p), d, n)
			}
			if n > 5 {
				t.Errorf("%s: %d extents, want at most 5", filepath.Base(p), n)
			}
		}
	}
}

// TestConcurrentReads reads random unaligned ranges from several goroutines
// and compares with qemu-img's raw output.
func TestConcurrentReads(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	for _, name := range []string{"zstd-64k", "chain-raw-qcow2-qcow2", "extl2-2M-writes", "zlib-512"} {
		var build func(*testing.T, string) string
		for _, v := range variants {
			if v.name == name {
				build = v.build
			}
		}
		t.Run(name, func(t *testing.T) {
			d := filepath.Join(dir, name)
			os.Mkdir(d, 0o755)
			p := build(t, d)
			ref := filepath.Join(d, "ref.raw")
			testutil.QemuImg(t, "convert", "-O", "raw", p, ref)
			want, err := os.ReadFile(ref)
			if err != nil {
				t.Fatal(err)
			}
			img := mustOpen(t, p)
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewSource(int64(g)))
					buf := make([]byte, 3*mib)
					for range 40 {
						off := rng.Int63n(int64(len(want)))
						n := 1 + rng.Intn(len(buf))
						got, err := img.ReadAt(buf[:n], off)
						end := min(off+int64(n), int64(len(want)))
						if got != int(end-off) || (err != nil && end == off+int64(n)) {
							t.Errorf("ReadAt(%d, %d) = %d, %v", n, off, got, err)
							return
						}
						if !bytes.Equal(buf[:got], want[off:end]) {
							t.Errorf("ReadAt(%d, %d): data differs", n, off)
							return
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}

func TestProbe(t *testing.T) {
	hdr := minimalImage()
	if !Probe(bytes.NewReader(hdr), int64(len(hdr))) {
		t.Error("minimal image not probed")
	}
	for _, b := range [][]byte{nil, []byte("QFI"), []byte("QFI\xfb\x00\x00\x00\x01"), []byte("QFI\xfb\x00\x00\x00\x04"), make([]byte, 512)} {
		if Probe(bytes.NewReader(b), int64(len(b))) {
			t.Errorf("Probe(%q) = true", b)
		}
	}
}

func TestMinimalImage(t *testing.T) {
	b := minimalImage()
	img, err := Open(&memFile{bytes.NewReader(b), "mem"}, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, img.Size())
	if _, err := img.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	want := append(bytes.Repeat([]byte{0xaa}, 512), make([]byte, 512)...)
	want = append(want, bytes.Repeat([]byte("ferry"), 512)[:512]...)
	want = append(want, make([]byte, 512)...)
	if !bytes.Equal(buf, want) {
		t.Fatalf("minimal image reads %x", buf)
	}
	e, err := img.Extent(1024, 1024)
	if err != nil || !e.Compressed || e.Length != 512 {
		t.Fatalf("Extent(1024) = %+v, %v", e, err)
	}
	if _, err := img.Extent(0, img.Size()+1); err == nil {
		t.Error("Extent past the end succeeded")
	}
	if n, err := img.ReadAt(buf, 1024); n != 1024 || err == nil {
		t.Errorf("ReadAt at the end = %d, %v; want 1024, EOF", n, err)
	}

	b = minimalExtL2Image()
	img, err = Open(&memFile{bytes.NewReader(b), "mem"}, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	buf = make([]byte, 32<<10)
	if _, err := img.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	want = make([]byte, len(buf))
	copy(want[4096:8192], b[16384+4096:])
	if !bytes.Equal(buf, want) {
		t.Fatal("extended L2 image reads wrong data")
	}
	var exts []format.Extent
	for off := int64(0); off < 32<<10; {
		e, err := img.Extent(off, 32<<10-off)
		if err != nil {
			t.Fatal(err)
		}
		exts = append(exts, e)
		off += e.Length
	}
	wantExts := []format.Extent{{Start: 0, Length: 4096, Zero: true}, {Start: 4096, Length: 4096, Allocated: true},
		{Start: 8192, Length: 24576, Allocated: true, Zero: true}}
	if fmt.Sprint(exts) != fmt.Sprint(wantExts) {
		t.Fatalf("extents %v, want %v", exts, wantExts)
	}
	if _, err := img.ReadAt(buf, 32<<10); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("garbage compressed cluster: %v", err)
	}
}

func TestZstdFrameLen(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	src := pattern(t, dir, "a.raw", mib, 22)
	p := toQcow2(t, src, filepath.Join(dir, "a.qcow2"), "compression_type=zstd", "-c")
	img := mustOpen(t, p)
	// Every compressed cluster's frame must be found exactly: decoding with
	// the trimmed source must give a full cluster.
	n := 0
	for c := int64(0); c < img.Size()/img.clusterSize; c++ {
		e := readBE(t, p, l2EntryOffset(t, p, c), 8)
		if e&flagCompressed == 0 {
			continue
		}
		d := e & (flagCompressed - 1)
		coff := int64(d & img.coffMask)
		nsec := int64(d>>img.csizeShift&img.csizeMask) + 1
		data, _ := os.ReadFile(p)
		src := data[coff:min(int64(len(data)), coff+nsec*512-coff&511)]
		fl := zstdFrameLen(src)
		if fl <= 0 || fl > len(src) {
			t.Fatalf("cluster %d: frame length %d of %d", c, fl, len(src))
		}
		dst := make([]byte, img.clusterSize)
		if m, err := format.DecodeZstd(dst, src[:fl]); err != nil || m != len(dst) {
			t.Fatalf("cluster %d: %d, %v", c, m, err)
		}
		n++
	}
	if n == 0 {
		t.Fatal("no compressed cluster")
	}
}

// memFile is a format.File over bytes.
type memFile struct {
	*bytes.Reader
	name string
}

func (m *memFile) Name() string { return m.name }
func (m *memFile) Close() error { return nil }

// minimalImage builds a 2 KiB-disk v3 image by hand: 512-byte clusters,
// cluster 0 data (0xaa), 1 zero flag, 2 compressed, 3 unallocated.
func minimalImage() []byte {
	b := make([]byte, 2560)
	copy(b, magic)
	be := func(off int, v uint64, w int) {
		for i := range w {
			b[off+i] = byte(v >> (8 * (w - 1 - i)))
		}
	}
	be(4, 3, 4)       // version
	be(20, 9, 4)      // cluster_bits
	be(24, 2048, 8)   // size
	be(36, 1, 4)      // l1_size
	be(40, 512, 8)    // l1_table_offset
	be(48, 0, 8)      // refcount table (none: read-only use)
	be(96, 4, 4)      // refcount_order
	be(100, 104, 4)   // header_length
	be(512, 1024, 8)  // L1[0] -> L2 at 1024
	be(1024, 1536, 8) // cluster 0 at 1536
	be(1032, 1, 8)    // cluster 1: zero
	// Cluster 2: raw deflate of "ferry"*, stored block, at 2048+... built
	// below; descriptor: offset | (sectors-1) << 61 (cluster_bits 9).
	for i := 1536; i < 2048; i++ {
		b[i] = 0xaa
	}
	comp := deflate(bytes.Repeat([]byte("ferry"), 512)[:512])
	copy(b[2048:], comp)
	be(1040, flagCompressed|2048, 8)
	return b
}

// minimalExtL2Image builds a 32 KiB image with 16 KiB clusters and extended
// L2 entries; the L1 table and the L2 table share cluster 1 (L1[0] is also
// L2 entry 0, a data cluster at 16384), so subcluster bitmaps are tested
// without a 64 KiB seed.
func minimalExtL2Image() []byte {
	b := make([]byte, 32<<10)
	copy(b, magic)
	be := func(off int, v uint64, w int) {
		for i := range w {
			b[off+i] = byte(v >> (8 * (w - 1 - i)))
		}
	}
	be(4, 3, 4)
	be(20, 14, 4)
	be(24, 64<<10, 8) // 4 clusters
	be(36, 1, 4)
	be(40, 16384, 8)
	be(72, incExtL2, 8)
	be(96, 4, 4)
	be(100, 104, 4)
	be(16384, 16384, 8)                     // L1[0] = L2 at 16384 = cluster 0 data at 16384
	be(16392, 0xffff0000_0000ff00, 8)       // cluster 0: subclusters 8-15 data, 16-31 zero
	be(16400, 0, 8)                         // cluster 1: unallocated
	be(16408, 0xffffffff_00000000, 8)       // cluster 1: all zero
	be(16416, flagCompressed|16384+4096, 8) // cluster 2: compressed (garbage)
	for i := 16384 + 512; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

// countingFile counts the reads on the image file.
type countingFile struct {
	format.File
	mu    sync.Mutex
	reads int
}

func (c *countingFile) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	return c.File.ReadAt(p, off)
}

// TestReadCoalescing checks the I/O pattern: one file read per contiguous
// run (qemu-img writes clusters in order), one per group of adjacent
// compressed clusters, and every L2 table read once.
func TestReadCoalescing(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	raw := filepath.Join(dir, "a.raw")
	data := bytes.Repeat([]byte("0123456789abcdef ferry "), 16*mib/23+1)[:16*mib]
	if err := os.WriteFile(raw, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, opts string
		extra      []string
	}{
		{"plain-4k", "cluster_size=4k", nil},
		{"zlib-4k", "cluster_size=4k", []string{"-c"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := toQcow2(t, raw, filepath.Join(dir, c.name+".qcow2"), c.opts, c.extra...)
			f, err := format.OpenFile(p)
			if err != nil {
				t.Fatal(err)
			}
			cf := &countingFile{File: f}
			img, err := Open(cf, format.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			opened := cf.reads
			const chunk = 4 * mib
			var wg sync.WaitGroup
			for g := range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, chunk)
					for off := int64(g) * chunk; off < img.Size(); off += 2 * chunk {
						if _, err := img.ReadAt(buf, off); err != nil {
							t.Error(err)
						}
						if !bytes.Equal(buf, data[off:off+chunk]) {
							t.Errorf("data differs at %d", off)
						}
					}
				}()
			}
			wg.Wait()
			// 16 MiB of 4 KiB clusters: 8 L2 tables of 2 MiB each; qemu-img
			// puts each table before its data, so a run breaks there.
			l2 := int(img.Size() >> img.l1Shift)
			if n := int(img.cache.loads.Load()); n != l2 {
				t.Errorf("%d L2 table loads for %d tables", n, l2)
			}
			got := cf.reads - opened - l2
			t.Logf("%d reads after open: %d L2 tables + %d data reads for %d chunks", cf.reads-opened, l2, got, img.Size()/chunk)
			if max := int(img.Size()/chunk) + l2; got > max {
				t.Errorf("%d data reads for %d chunks and %d L2 boundaries", got, img.Size()/chunk, l2)
			}
		})
	}
}
