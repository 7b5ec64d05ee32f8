package vdi

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/internal/testutil"
)

func open(t testing.TB, path string) (*Image, error) {
	t.Helper()
	f, err := format.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := Open(f, format.Options{})
	if err != nil {
		f.Close()
		return nil, err
	}
	t.Cleanup(func() { img.Close() })
	return img, nil
}

func qemuVirtualSize(t *testing.T, path string) int64 {
	t.Helper()
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	out := testutil.QemuImg(t, "info", "-f", "vdi", "--output", "json", path)
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	return info.VirtualSize
}

// checkAgainstQemu compares the image with `qemu-img convert -f vdi -O raw`.
func checkAgainstQemu(t *testing.T, path string) *Image {
	t.Helper()
	wantSum, wantSize := testutil.ReferenceSHA256(t, path, "vdi")
	img, err := open(t, path)
	if err != nil {
		t.Fatal(err)
	}
	if img.Size() != wantSize {
		t.Fatalf("size %d, qemu-img converts %d bytes", img.Size(), wantSize)
	}
	if vs := qemuVirtualSize(t, path); vs != img.Size() {
		t.Fatalf("size %d, qemu-img info says %d", img.Size(), vs)
	}
	if got := testutil.ImageSHA256(t, img); got != wantSum {
		t.Fatalf("sha256 %s, qemu-img %s", got, wantSum)
	}
	return img
}

func TestQemuImages(t *testing.T) {
	testutil.Need(t, "qemu-img")
	cases := []struct {
		name string
		size int64
		opts []string
		sub  string
	}{
		{"dynamic-10000000", 10000000, nil, "dynamic"},
		{"dynamic-5MiB", 5 << 20, nil, "dynamic"},
		{"dynamic-odd", 2<<20 + 4096 + 512, nil, "dynamic"},
		{"dynamic-small", 8192, nil, "dynamic"},
		{"static-10000000", 10000000, []string{"-o", "static=on"}, "static"},
		{"static-3MiB", 3 << 20, []string{"-o", "static=on"}, "static"},
		{"static-odd", 1<<20 + 1536, []string{"-o", "static=on"}, "static"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "src.raw")
			testutil.Pattern(t, src, c.size, int64(i+1))
			path := filepath.Join(dir, "img.vdi")
			args := append([]string{"convert", "-f", "raw", "-O", "vdi"}, c.opts...)
			testutil.QemuImg(t, append(args, src, path)...)
			img := checkAgainstQemu(t, path)
			in := img.Info()
			if in.Subformat != c.sub || in.Format != "vdi" || in.ClusterSize != 1<<20 || in.VirtualSize != img.Size() {
				t.Fatalf("Info = %+v", in)
			}
			if !probeFile(t, path) {
				t.Fatal("Probe = false")
			}
			concurrentRead(t, img, path)
		})
	}
}

// concurrentRead reads with two goroutines in 4 MiB chunks and compares
// with a sequential read.
func concurrentRead(t *testing.T, img *Image, path string) {
	t.Helper()
	want := make([]byte, img.Size())
	if n, err := img.ReadAt(want, 0); int64(n) != img.Size() || (err != nil && err != io.EOF) {
		t.Fatalf("ReadAt whole = %d, %v", n, err)
	}
	const chunk = 4 << 20
	errc := make(chan error, 2)
	for w := int64(0); w < 2; w++ {
		go func() {
			buf := make([]byte, chunk)
			for off := w * chunk; off < img.Size(); off += 2 * chunk {
				n, err := img.ReadAt(buf, off)
				if err != nil && err != io.EOF {
					errc <- err
					return
				}
				if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
					errc <- errors.New("concurrent read differs")
					return
				}
			}
			errc <- nil
		}()
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

// TestOutOfOrder: blocks allocated in reverse order by writes through
// qemu-io, so the block map is not the identity.
func TestOutOfOrder(t *testing.T) {
	testutil.Need(t, "qemu-io")
	path := filepath.Join(t.TempDir(), "ooo.vdi")
	testutil.QemuImg(t, "create", "-q", "-f", "vdi", path, "6M")
	testutil.QemuIO(t, path, "vdi",
		"write -P 0x11 5M 1M", "write -P 0x22 3M 512K", "write -P 0x33 4M 1M",
		"write -P 0x44 0 4096", "write -P 0x55 1M 1M", "write -P 0x66 2M 1M")
	img := checkAgainstQemu(t, path)
	if got := img.bmap; got[5] != 0 || got[3] != 1 || got[4] != 2 {
		t.Fatalf("block map %v: not out of order", got)
	}
	e, err := img.Extent(0, img.Size())
	if err != nil || !e.Allocated || e.Length != img.Size() {
		t.Fatalf("Extent = %+v, %v", e, err)
	}
}

func patch(t *testing.T, path string, fn func(d []byte) []byte) {
	t.Helper()
	d, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, fn(d), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestPatched checks header and map variants qemu reads, against qemu.
func TestPatched(t *testing.T) {
	testutil.Need(t, "qemu-img")
	le := binary.LittleEndian
	cases := []struct {
		name string
		fn   func(d []byte) []byte
	}{
		// Discarded blocks read as zeros.
		{"discarded", func(d []byte) []byte {
			bm := le.Uint32(d[0x154:])
			le.PutUint32(d[bm+4:], entryDiscarded)
			le.PutUint32(d[bm+12:], entryDiscarded)
			return d
		}},
		// An unaligned disk size is rounded up to a sector.
		{"unaligned-size", func(d []byte) []byte {
			le.PutUint64(d[0x170:], le.Uint64(d[0x170:])-1000)
			return d
		}},
		// Two blocks mapped to the same data.
		{"shared-block", func(d []byte) []byte {
			bm := le.Uint32(d[0x154:])
			copy(d[bm+8:bm+12], d[bm:bm+4])
			return d
		}},
		// Unused map entries past the disk size are never looked at.
		{"extra-entries", func(d []byte) []byte {
			le.PutUint64(d[0x170:], 2<<20)
			return d
		}},
		// The last block only partly in the file: the part inside the
		// disk is there.
		{"short-last-block", func(d []byte) []byte {
			le.PutUint64(d[0x170:], 3<<20+8192)
			return d[:int64(le.Uint32(d[0x158:]))+3<<20+8192]
		}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "src.raw")
			testutil.Pattern(t, src, 4<<20, int64(50+i))
			// Fill every block so that each is allocated.
			testutil.WriteAt(t, src, 0, []byte("block0"))
			testutil.WriteAt(t, src, 1<<20, []byte("block1"))
			testutil.WriteAt(t, src, 2<<20, []byte("block2"))
			testutil.WriteAt(t, src, 3<<20, []byte("block3"))
			path := filepath.Join(dir, "img.vdi")
			testutil.QemuImg(t, "convert", "-f", "raw", "-O", "vdi", "-o", "static=on", src, path)
			patch(t, path, c.fn)
			checkAgainstQemu(t, path)
		})
	}
}

func probeFile(t testing.TB, path string) bool {
	t.Helper()
	f, err := format.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return Probe(f, f.Size())
}

func TestProbe(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	raw := filepath.Join(dir, "x.raw")
	testutil.Pattern(t, raw, 1<<20, 9)
	vhd := filepath.Join(dir, "x.vhd")
	testutil.QemuImg(t, "create", "-q", "-f", "vpc", vhd, "1M")
	qcow := filepath.Join(dir, "x.qcow2")
	testutil.QemuImg(t, "create", "-q", "-f", "qcow2", qcow, "1M")
	vdi := filepath.Join(dir, "x.vdi")
	testutil.QemuImg(t, "create", "-q", "-f", "vdi", vdi, "1M")
	short := filepath.Join(dir, "short")
	d, _ := os.ReadFile(vdi)
	os.WriteFile(short, d[:100], 0o644)
	for _, c := range []struct {
		path string
		want bool
	}{{raw, false}, {vhd, false}, {qcow, false}, {vdi, true}, {short, false}} {
		if got := probeFile(t, c.path); got != c.want {
			t.Errorf("Probe(%s) = %v, want %v", filepath.Base(c.path), got, c.want)
		}
	}
}

func TestBadInputs(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	testutil.Pattern(t, src, 3<<20, 3)
	testutil.WriteAt(t, src, 2<<20, []byte("last block"))
	path := filepath.Join(dir, "img.vdi")
	testutil.QemuImg(t, "convert", "-O", "vdi", src, path)
	orig, _ := os.ReadFile(path)
	le := binary.LittleEndian
	mut := func(fn func(d []byte)) []byte {
		d := bytes.Clone(orig)
		fn(d)
		return d
	}
	bm := int(le.Uint32(orig[0x154:]))
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"tiny", orig[:200], format.ErrWrongType},
		{"no-signature", mut(func(d []byte) { d[0x40] = 0 }), format.ErrWrongType},
		{"truncated-data", orig[:len(orig)-4096], format.ErrCorrupt},
		{"truncated-map", orig[:bm+4], format.ErrCorrupt},
		{"entry-beyond-eof", mut(func(d []byte) { le.PutUint32(d[bm:], 1000) }), format.ErrCorrupt},
		{"entry-max-allocated", mut(func(d []byte) { le.PutUint32(d[bm+4:], 0xfffffffd) }), format.ErrCorrupt},
		{"map-beyond-eof", mut(func(d []byte) { le.PutUint32(d[0x154:], 1<<30) }), format.ErrCorrupt},
		{"map-offset-max", mut(func(d []byte) { le.PutUint32(d[0x154:], 0xfffffe00) }), format.ErrCorrupt},
		{"version-1.0", mut(func(d []byte) { le.PutUint32(d[0x44:], 0x00010000) }), format.ErrUnsupported},
		{"size-2^62", mut(func(d []byte) { le.PutUint64(d[0x170:], 1<<62) }), format.ErrUnsupported},
		{"size-max-blocks", mut(func(d []byte) { le.PutUint64(d[0x170:], maxDiskSize); le.PutUint32(d[0x180:], maxBlocks) }), format.ErrUnsupported},
		{"size-beyond-map", mut(func(d []byte) { le.PutUint64(d[0x170:], 1<<40) }), format.ErrCorrupt},
		{"huge-map-small-file", mut(func(d []byte) { le.PutUint64(d[0x170:], 1<<40); le.PutUint32(d[0x180:], 1<<20) }), format.ErrCorrupt},
		{"block-size-2MiB", mut(func(d []byte) { le.PutUint32(d[0x178:], 2<<20) }), format.ErrUnsupported},
		{"block-size-0", mut(func(d []byte) { le.PutUint32(d[0x178:], 0) }), format.ErrUnsupported},
		{"sector-size-4096", mut(func(d []byte) { le.PutUint32(d[0x168:], 4096) }), format.ErrUnsupported},
		{"block-extra", mut(func(d []byte) { le.PutUint32(d[0x17c:], 512) }), format.ErrUnsupported},
		{"unaligned-map", mut(func(d []byte) { le.PutUint32(d[0x154:], 0x201) }), format.ErrUnsupported},
		{"unaligned-data", mut(func(d []byte) { le.PutUint32(d[0x158:], 0x401) }), format.ErrUnsupported},
		{"parent-uuid", mut(func(d []byte) { d[0x1b8] = 1 }), format.ErrUnsupported},
		{"link-uuid", mut(func(d []byte) { d[0x1a8] = 1 }), format.ErrUnsupported},
		{"too-many-blocks", mut(func(d []byte) { le.PutUint32(d[0x180:], maxBlocks+1) }), format.ErrUnsupported},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, c.name+".vdi")
			if err := os.WriteFile(p, c.data, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := open(t, p)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}
}

// TestHugeEmpty maps a 1 TiB empty image in one Extent call.
func TestHugeEmpty(t *testing.T) {
	testutil.Need(t, "qemu-img")
	path := filepath.Join(t.TempDir(), "huge.vdi")
	testutil.QemuImg(t, "create", "-q", "-f", "vdi", path, "1T")
	img, err := open(t, path)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	e, err := img.Extent(0, img.Size())
	if err != nil || e.Length != img.Size() || !e.Zero || e.Allocated {
		t.Fatalf("Extent = %+v, %v", e, err)
	}
	t.Logf("1 TiB empty image mapped in %v", time.Since(t0))
	b := make([]byte, 4<<20)
	if n, err := img.ReadAt(b, img.Size()-int64(len(b))); n != len(b) || err != nil || !bytes.Equal(b, make([]byte, len(b))) {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if n, err := img.ReadAt(b, img.Size()-10); n != 10 || err != io.EOF {
		t.Fatalf("ReadAt at the end = %d, %v", n, err)
	}
	if _, err := img.Extent(img.Size()-10, 11); err == nil {
		t.Fatal("Extent past the end: no error")
	}
	if _, err := img.ReadAt(b, -1); err == nil {
		t.Fatal("ReadAt(-1): no error")
	}
}
