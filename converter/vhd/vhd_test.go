package vhd

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/internal/testutil"
)

// qemuVirtualSize is `qemu-img info`'s virtual-size.
func qemuVirtualSize(t *testing.T, path string) int64 {
	t.Helper()
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	out := testutil.QemuImg(t, "info", "-f", "vpc", "--output", "json", path)
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	return info.VirtualSize
}

// checkAgainstQemu compares the image with `qemu-img convert -f vpc -O raw`.
func checkAgainstQemu(t *testing.T, path string) *Image {
	t.Helper()
	wantSum, wantSize := testutil.ReferenceSHA256(t, path, "vpc")
	img, err := open(t, path, format.Options{})
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
		opts string
		sub  string
	}{
		{"dynamic-10000000", 10000000, "subformat=dynamic", "dynamic"},
		{"dynamic-5MiB", 5 << 20, "subformat=dynamic", "dynamic"},
		{"dynamic-odd", 3<<20 + 12345, "subformat=dynamic", "dynamic"},
		{"dynamic-force-size", 7<<20 + 1000, "subformat=dynamic,force_size=on", "dynamic"},
		{"fixed-10000000", 10000000, "subformat=fixed", "fixed"},
		{"fixed-1MiB", 1 << 20, "subformat=fixed", "fixed"},
		// Not a geometry multiple: qemu sizes it by current_size ("qem2").
		{"fixed-force-size", 5000000, "subformat=fixed,force_size=on", "fixed"},
		{"fixed-tiny-force-size", 4096, "subformat=fixed,force_size=on", "fixed"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "src.raw")
			testutil.Pattern(t, src, c.size, int64(i+1))
			path := filepath.Join(dir, "img.vhd")
			testutil.QemuImg(t, "convert", "-f", "raw", "-O", "vpc", "-o", c.opts, src, path)
			img := checkAgainstQemu(t, path)
			if !probeFile(t, path) {
				t.Fatal("Probe = false")
			}
			in := img.Info()
			if in.Subformat != c.sub || in.Format != "vpc" || in.VirtualSize != img.Size() {
				t.Fatalf("Info = %+v", in)
			}
			if c.sub == "dynamic" && in.ClusterSize != 2<<20 {
				t.Fatalf("cluster size %d", in.ClusterSize)
			}
		})
	}
}

func TestQemuCreateSizes(t *testing.T) {
	testutil.Need(t, "qemu-img")
	for _, sub := range []string{"dynamic", "fixed"} {
		for _, size := range []string{"10000000", "1G", "127G"} {
			if sub == "fixed" && size != "10000000" {
				continue
			}
			t.Run(sub+"-"+size, func(t *testing.T) {
				path := tempPath(t, "x.vhd")
				testutil.QemuImg(t, "create", "-q", "-f", "vpc", "-o", "subformat="+sub, path, size)
				img, err := open(t, path, format.Options{})
				if err != nil {
					t.Fatal(err)
				}
				if want := qemuVirtualSize(t, path); img.Size() != want {
					t.Fatalf("virtual size %d, qemu %d", img.Size(), want)
				}
			})
		}
	}
}

// TestSizeRules patches footers so each of qemu's size rules applies, and
// compares size and bytes with qemu-img.
func TestSizeRules(t *testing.T) {
	testutil.Need(t, "qemu-img")
	be := binary.BigEndian
	cases := []struct {
		name  string
		sub   string
		patch func(f []byte)
	}{
		{"vpc-chs-smaller", "fixed", func(f []byte) { copy(f[28:], "vpc "); be.PutUint16(f[56:], be.Uint16(f[56:])-7) }},
		{"vbox-chs-larger-than-file", "fixed", func(f []byte) { copy(f[28:], "vbox"); be.PutUint16(f[56:], be.Uint16(f[56:])+40) }},
		{"win-current-size", "fixed", func(f []byte) { copy(f[28:], "win "); be.PutUint64(f[48:], be.Uint64(f[48:])-3*512-17) }},
		{"tap-current-size", "fixed", func(f []byte) { copy(f[28:], "tap\x00"); be.PutUint64(f[48:], 1<<20+512) }},
		{"tap-space-is-chs", "fixed", func(f []byte) { copy(f[28:], "tap "); be.PutUint64(f[48:], 1<<20+512) }},
		{"d2v-current-size", "dynamic", func(f []byte) { copy(f[28:], "d2v "); be.PutUint64(f[48:], 3<<20) }},
		{"CTXS-current-size", "dynamic", func(f []byte) { copy(f[28:], "CTXS"); be.PutUint64(f[48:], 2<<20+4096) }},
		{"max-geometry", "dynamic", func(f []byte) {
			copy(f[28:], "qemu")
			be.PutUint16(f[56:], 65535)
			f[58], f[59] = 16, 255
			be.PutUint64(f[48:], 1<<20)
		}},
		{"vpc-chs-smaller-dynamic", "dynamic", func(f []byte) { copy(f[28:], "vpc "); be.PutUint16(f[56:], be.Uint16(f[56:])/2) }},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "src.raw")
			testutil.Pattern(t, src, 6<<20, int64(100+i))
			path := filepath.Join(dir, "img.vhd")
			testutil.QemuImg(t, "convert", "-f", "raw", "-O", "vpc", "-o", "subformat="+c.sub, src, path)
			patchFooters(t, path, c.patch)
			checkAgainstQemu(t, path)
		})
	}
}

// TestBuiltDynamic reads hand-built dynamic images with block sizes qemu
// cannot create. Sectors whose bitmap bit is clear hold garbage: qemu
// reads it (it ignores the bitmap of dynamic images), and so must we.
func TestBuiltDynamic(t *testing.T) {
	testutil.Need(t, "qemu-img")
	for _, bs := range []uint32{512, 4096, 64 << 10, 512 << 10, 2 << 20, 8 << 20} {
		t.Run(byteSize(int64(bs)), func(t *testing.T) {
			rng := rand.New(rand.NewSource(int64(bs)))
			size := uint64(6<<20 + 3*512)
			s := vhdSpec{diskType: diskDynamic, currentSize: size, blockSize: bs, blocks: map[int64]blockSpec{}}
			nb := int64((size + uint64(bs) - 1) / uint64(bs))
			bmSize := bitmapBytes(int64(bs), false)
			for bi := int64(0); bi < nb; bi++ {
				if rng.Intn(3) == 0 {
					continue
				}
				d := make([]byte, bs)
				rng.Read(d)
				bm := make([]byte, bmSize)
				setBits(bm, 0, min(int(bs/512)/2, len(bm)*8))
				s.blocks[bi] = blockSpec{bitmap: bm, data: d}
			}
			path := writeFile(t, tempPath(t, "b.vhd"), s.build())
			img := checkAgainstQemu(t, path)
			if img.Info().ClusterSize != int64(bs) {
				t.Fatalf("cluster size %d", img.Info().ClusterSize)
			}
		})
	}
}

func byteSize(n int64) string {
	switch {
	case n >= 1<<20:
		return strconv.FormatInt(n>>20, 10) + "MiB"
	case n >= 1<<10:
		return strconv.FormatInt(n>>10, 10) + "KiB"
	}
	return strconv.FormatInt(n, 10) + "B"
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
	vdi := filepath.Join(dir, "x.vdi")
	testutil.QemuImg(t, "create", "-q", "-f", "vdi", vdi, "1M")
	qcow := filepath.Join(dir, "x.qcow2")
	testutil.QemuImg(t, "create", "-q", "-f", "qcow2", qcow, "1M")
	fixed := filepath.Join(dir, "f.vhd")
	testutil.QemuImg(t, "create", "-q", "-f", "vpc", "-o", "subformat=fixed", fixed, "1M")
	dyn := filepath.Join(dir, "d.vhd")
	testutil.QemuImg(t, "create", "-q", "-f", "vpc", dyn, "1M")
	// A footer with a bad checksum is not a VHD to Probe.
	badsum := filepath.Join(dir, "bad.vhd")
	d, _ := os.ReadFile(dyn)
	d[0x44] ^= 1
	writeFile(t, badsum, d)
	// A fixed footer claiming a dynamic type at the end only.
	notfixed := filepath.Join(dir, "nf.vhd")
	d, _ = os.ReadFile(fixed)
	f := d[len(d)-512:]
	binary.BigEndian.PutUint32(f[60:], diskDynamic)
	binary.BigEndian.PutUint32(f[64:], checksum(f, 64))
	writeFile(t, notfixed, d)
	empty := writeFile(t, filepath.Join(dir, "empty"), nil)
	for _, c := range []struct {
		path string
		want bool
	}{{raw, false}, {vdi, false}, {qcow, false}, {fixed, true}, {dyn, true}, {badsum, false}, {notfixed, false}, {empty, false}} {
		if got := probeFile(t, c.path); got != c.want {
			t.Errorf("Probe(%s) = %v, want %v", filepath.Base(c.path), got, c.want)
		}
	}
}

// parentFixture makes a qemu dynamic VHD parent and returns its path, its
// raw content and its footer UUID.
func parentFixture(t *testing.T, dir string, size int64) (string, []byte, [16]byte) {
	t.Helper()
	src := filepath.Join(dir, "parent.raw")
	testutil.Pattern(t, src, size, 42)
	parent := filepath.Join(dir, "parent.vhd")
	testutil.QemuImg(t, "convert", "-f", "raw", "-O", "vpc", src, parent)
	out := filepath.Join(dir, "parent-ref.raw")
	testutil.QemuImg(t, "convert", "-f", "vpc", "-O", "raw", parent, out)
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(out)
	os.Remove(src)
	d, _ := os.ReadFile(parent)
	var u [16]byte
	copy(u[:], d[68:84])
	return parent, raw, u
}

// diffChild builds a differencing child over parentRaw: some blocks with
// partial bitmaps (clear sectors hold 0xAA garbage that must not be read),
// one fully set, the rest unallocated. It returns the spec and the raw
// disk expected (the parent with the child's sectors overlaid).
func diffChild(parentRaw []byte, parentUUID [16]byte, bs uint32, seed int64) (vhdSpec, []byte) {
	rng := rand.New(rand.NewSource(seed))
	size := uint64(len(parentRaw))
	s := vhdSpec{
		diskType: diskDifferencing, currentSize: size, blockSize: bs,
		parentUUID: parentUUID, parentName: "parent.vhd",
		blocks: map[int64]blockSpec{},
	}
	s.uuid[0] = 0xc1
	want := bytes.Clone(parentRaw)
	spb := int(bs / 512)
	nb := int64((size + uint64(bs) - 1) / uint64(bs))
	bmSize := bitmapBytes(int64(bs), true)
	for bi := int64(0); bi < nb; bi++ {
		if bi%3 == 1 {
			continue // unallocated: the parent's data
		}
		d := bytes.Repeat([]byte{0xAA}, int(bs))
		bm := make([]byte, bmSize)
		var runs [][2]int
		switch bi % 3 {
		case 0: // a few runs, including one across a byte boundary
			runs = [][2]int{{0, 1}, {3, 11}, {spb / 2, spb/2 + 9}, {spb - 2, spb}}
		case 2:
			runs = [][2]int{{0, spb}}
		}
		for _, r := range runs {
			r[0], r[1] = min(r[0], spb-1), min(r[1], spb)
			setBits(bm, r[0], r[1])
			rng.Read(d[r[0]*512 : r[1]*512])
			for s := r[0]; s < r[1]; s++ {
				voff := bi*int64(bs) + int64(s)*512
				if voff < int64(size) {
					copy(want[voff:min(int64(size), voff+512)], d[s*512:])
				}
			}
		}
		s.blocks[bi] = blockSpec{bitmap: bm, data: d}
	}
	return s, want
}

func TestDifferencing(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	_, parentRaw, pu := parentFixture(t, dir, 7<<20+4096)
	for _, bs := range []uint32{1024, 4096, 64 << 10, 2 << 20} {
		t.Run(byteSize(int64(bs)), func(t *testing.T) {
			s, want := diffChild(parentRaw, pu, bs, int64(bs))
			s.locators = []locSpec{
				{platW2ku, utf16le(`C:\vms\parent.vhd`)},
				{platW2ru, utf16le(`.\parent.vhd`)},
			}
			child := writeFile(t, filepath.Join(dir, "child-"+byteSize(int64(bs))+".vhd"), s.build())
			img, err := open(t, child, chainOpts(t, dir))
			if err != nil {
				t.Fatal(err)
			}
			if img.Size() != int64(len(want)) {
				t.Fatalf("size %d, want %d", img.Size(), len(want))
			}
			if got := testutil.ImageSHA256(t, img); got != sha(want) {
				t.Fatalf("sha256 %s, want %s", got, sha(want))
			}
			checkExtents(t, img, want)
			in := img.Info()
			if in.Subformat != "differencing" || in.Backing != "parent.vhd" || in.BackingFormat != "vpc" || in.BackingInfo == nil {
				t.Fatalf("Info = %+v", in)
			}
			// Concurrent large reads, as the convert engine does them.
			concurrentRead(t, img, want)
		})
	}
}

// checkExtents walks the map and checks that Zero extents are zero in want
// and that the extents tile the disk.
func checkExtents(t *testing.T, img format.Image, want []byte) {
	t.Helper()
	size := img.Size()
	for off := int64(0); off < size; {
		e, err := img.Extent(off, size-off)
		if err != nil {
			t.Fatal(err)
		}
		if e.Start != off || e.Length <= 0 {
			t.Fatalf("Extent(%d) = %+v", off, e)
		}
		if e.Zero && !bytes.Equal(want[e.Start:e.Start+e.Length], make([]byte, e.Length)) {
			t.Fatalf("extent %+v is Zero but the disk has data there", e)
		}
		off += e.Length
	}
	// Small windows at odd offsets must agree with the whole map.
	for _, off := range []int64{1, 513, 4095, 65537, size / 3, size - 1} {
		if off <= 0 || off >= size {
			continue
		}
		e, err := img.Extent(off, min(size-off, 1000))
		if err != nil || e.Start != off || e.Length <= 0 || e.Length > 1000 {
			t.Fatalf("Extent(%d, 1000) = %+v, %v", off, e, err)
		}
	}
}

func concurrentRead(t *testing.T, img format.Image, want []byte) {
	t.Helper()
	const chunk = 3<<20 + 512
	errc := make(chan error, 2)
	for w := 0; w < 2; w++ {
		go func(w int) {
			buf := make([]byte, chunk)
			for off := int64(w) * chunk; off < img.Size(); off += 2 * chunk {
				n, err := img.ReadAt(buf, off)
				if err != nil && err != io.EOF {
					errc <- err
					return
				}
				if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
					errc <- fmt.Errorf("concurrent read differs at %d", off)
					return
				}
			}
			errc <- nil
		}(w)
	}
	for i := 0; i < 2; i++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

func TestDifferencingLocators(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	_, parentRaw, pu := parentFixture(t, dir, 3<<20)
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		child    string // path of the child, relative to dir
		locs     []locSpec
		pname    string
		uuid     *[16]byte
		resolver bool
		want     error  // nil: opens and reads as expected
		mention  string // the error names this reference
	}{
		{name: "W2ru", locs: []locSpec{{platW2ru, utf16le(`.\parent.vhd`)}}, resolver: true},
		{name: "W2ru-up", child: "sub/child.vhd", locs: []locSpec{{platW2ru, utf16le(`..\parent.vhd`)}}, resolver: true},
		{name: "Wi2r", locs: []locSpec{{platWi2r, []byte("parent.vhd\x00")}}, resolver: true},
		{name: "parent-name-after-absolute", locs: []locSpec{{platW2ku, utf16le(`D:\x\parent.vhd`)}}, pname: "parent.vhd", resolver: true},
		{name: "absolute-only", locs: []locSpec{{platW2ku, utf16le("/etc/passwd")}}, resolver: true, want: format.ErrUnsafeReference, mention: "/etc/passwd"},
		{name: "escape", locs: []locSpec{{platW2ru, utf16le(`..\..\x`)}}, resolver: true, want: format.ErrUnsafeReference, mention: "../../x"},
		{name: "windows-absolute", locs: []locSpec{{platWi2k, []byte(`C:\parent.vhd`)}}, resolver: true, want: format.ErrUnsafeReference, mention: "C:/parent.vhd"},
		{name: "macx", locs: []locSpec{{platMacX, []byte("file:///Users/me/parent.vhd")}}, resolver: true, want: format.ErrUnsafeReference, mention: "/Users/me/parent.vhd"},
		{name: "refused-and-missing", locs: []locSpec{{platW2ku, utf16le("/etc/passwd")}, {platW2ru, utf16le("missing.vhd")}}, resolver: true, want: format.ErrUnsafeReference, mention: "/etc/passwd"},
		{name: "no-resolver", locs: []locSpec{{platW2ru, utf16le(`.\parent.vhd`)}}, want: format.ErrUnsafeReference, mention: "parent.vhd"},
		{name: "missing", locs: []locSpec{{platW2ru, utf16le(`nothere.vhd`)}}, resolver: true, want: fs.ErrNotExist, mention: "nothere.vhd"},
		{name: "loop", locs: []locSpec{{platW2ru, utf16le(`.\child.vhd`)}}, resolver: true, want: format.ErrReferenceLoop},
		{name: "uuid-mismatch", locs: []locSpec{{platW2ru, utf16le(`parent.vhd`)}}, uuid: &[16]byte{1, 2, 3}, resolver: true, want: format.ErrCorrupt, mention: "UUID"},
		{name: "no-locator", resolver: true, want: format.ErrCorrupt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, want := diffChild(parentRaw, pu, 64<<10, 7)
			s.locators = c.locs
			s.parentName = c.pname
			if c.uuid != nil {
				s.parentUUID = *c.uuid
			}
			name := c.child
			if name == "" {
				name = "child.vhd"
			}
			path := writeFile(t, filepath.Join(dir, name), s.build())
			defer os.Remove(path)
			var opts format.Options
			if c.resolver {
				opts = chainOpts(t, dir)
			}
			img, err := open(t, path, opts)
			if c.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if got := testutil.ImageSHA256(t, img); got != sha(want) {
					t.Fatalf("sha256 %s, want %s", got, sha(want))
				}
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if !strings.Contains(err.Error(), c.mention) {
				t.Fatalf("error %q does not name %q", err, c.mention)
			}
		})
	}
}

// TestChain: a differencing image over a differencing image over a dynamic
// one, and a two-image loop.
func TestChain(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	_, parentRaw, pu := parentFixture(t, dir, 2<<20+8192)
	mid, midRaw := diffChild(parentRaw, pu, 4096, 1)
	mid.uuid = [16]byte{0x11}
	mid.locators = []locSpec{{platW2ru, utf16le("parent.vhd")}}
	writeFile(t, filepath.Join(dir, "mid.vhd"), mid.build())
	top, topRaw := diffChild(midRaw, mid.uuid, 64<<10, 2)
	top.parentName = "mid.vhd"
	writeFile(t, filepath.Join(dir, "top.vhd"), top.build())
	img, err := open(t, filepath.Join(dir, "top.vhd"), chainOpts(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if got := testutil.ImageSHA256(t, img); got != sha(topRaw) {
		t.Fatal("chain of two differencing images reads wrong data")
	}
	checkExtents(t, img, topRaw)

	// a -> b -> a
	a, _ := diffChild(parentRaw, [16]byte{}, 4096, 3)
	a.parentName = "b.vhd"
	b, _ := diffChild(parentRaw, [16]byte{}, 4096, 4)
	b.parentName = "a.vhd"
	writeFile(t, filepath.Join(dir, "a.vhd"), a.build())
	writeFile(t, filepath.Join(dir, "b.vhd"), b.build())
	if _, err := open(t, filepath.Join(dir, "a.vhd"), chainOpts(t, dir)); !errors.Is(err, format.ErrReferenceLoop) {
		t.Fatalf("a -> b -> a: err = %v, want ErrReferenceLoop", err)
	}
}

func TestBadInputs(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	testutil.Pattern(t, src, 5<<20, 5)
	dyn := filepath.Join(dir, "dyn.vhd")
	testutil.QemuImg(t, "convert", "-O", "vpc", src, dyn)
	fixed := filepath.Join(dir, "fixed.vhd")
	testutil.QemuImg(t, "convert", "-O", "vpc", "-o", "subformat=fixed", src, fixed)
	dynData, _ := os.ReadFile(dyn)
	be := binary.BigEndian

	mutate := func(src []byte, fn func(d []byte)) []byte {
		d := bytes.Clone(src)
		fn(d)
		return d
	}
	footer0 := func(fn func(f []byte)) func(d []byte) {
		return func(d []byte) {
			fn(d[:512])
			be.PutUint32(d[64:], checksum(d[:512], 64))
		}
	}
	header := func(fn func(h []byte)) func(d []byte) {
		return func(d []byte) {
			h := d[512:1536]
			fn(h)
			be.PutUint32(h[36:], checksum(h, 36))
		}
	}
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"tiny", dynData[:100], format.ErrWrongType},
		{"truncated-half", dynData[:len(dynData)/2], format.ErrCorrupt},
		{"truncated-in-bat", dynData[:1600], format.ErrCorrupt},
		{"truncated-header", dynData[:700], format.ErrCorrupt},
		{"footer-checksum", mutate(dynData, func(d []byte) { d[0x44] ^= 0xff }), format.ErrCorrupt},
		{"size-2^62", mutate(dynData, footer0(func(f []byte) { copy(f[28:], "qem2"); be.PutUint64(f[48:], 1<<62) })), format.ErrUnsupported},
		{"size-2041GiB", mutate(dynData, footer0(func(f []byte) { copy(f[28:], "qem2"); be.PutUint64(f[48:], 2041<<30) })), format.ErrUnsupported},
		{"header-beyond-eof", mutate(dynData, footer0(func(f []byte) { be.PutUint64(f[16:], 1<<40) })), format.ErrCorrupt},
		{"header-offset-max", mutate(dynData, footer0(func(f []byte) { be.PutUint64(f[16:], ^uint64(0)) })), format.ErrCorrupt},
		{"bad-magic", mutate(dynData, func(d []byte) { d[512] = 'X' }), format.ErrCorrupt},
		{"bat-beyond-eof", mutate(dynData, header(func(h []byte) { be.PutUint64(h[16:], 1<<40) })), format.ErrCorrupt},
		{"bat-offset-max", mutate(dynData, header(func(h []byte) { be.PutUint64(h[16:], ^uint64(0)-2) })), format.ErrCorrupt},
		{"bat-entries-huge", mutate(dynData, header(func(h []byte) { be.PutUint32(h[28:], 0xffffffff) })), format.ErrCorrupt},
		{"bat-too-small", mutate(dynData, header(func(h []byte) { be.PutUint32(h[28:], 1) })), format.ErrCorrupt},
		{"block-size-zero", mutate(dynData, header(func(h []byte) { be.PutUint32(h[32:], 0) })), format.ErrCorrupt},
		{"block-size-odd", mutate(dynData, header(func(h []byte) { be.PutUint32(h[32:], 3<<20) })), format.ErrCorrupt},
		{"block-size-256", mutate(dynData, header(func(h []byte) { be.PutUint32(h[32:], 256) })), format.ErrCorrupt},
		{"block-beyond-eof", mutate(dynData, func(d []byte) { be.PutUint32(d[1536:], 0x7fffffff) }), format.ErrCorrupt},
		{"disk-type-9", mutate(dynData, footer0(func(f []byte) { be.PutUint32(f[60:], 9) })), format.ErrUnsupported},
		{"not-vhd", bytes.Repeat([]byte("x"), 4096), format.ErrWrongType},
	}
	fixedData, _ := os.ReadFile(fixed)
	cases = append(cases, struct {
		name string
		data []byte
		want error
	}{"fixed-footer-type", mutate(fixedData, func(d []byte) {
		f := d[len(d)-512:]
		be.PutUint32(f[60:], diskDynamic)
		be.PutUint32(f[64:], checksum(f, 64))
	}), format.ErrCorrupt}, struct {
		name string
		data []byte
		want error
	}{"fixed-truncated", fixedData[:len(fixedData)-100], format.ErrWrongType})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := writeFile(t, filepath.Join(dir, c.name+".vhd"), c.data)
			_, err := open(t, path, format.Options{})
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}

	// qemu ignores the dynamic header checksum: so do we, and say so.
	t.Run("header-checksum", func(t *testing.T) {
		d := bytes.Clone(dynData)
		d[512+36] ^= 0xff
		path := writeFile(t, filepath.Join(dir, "hc.vhd"), d)
		img := checkAgainstQemu(t, path)
		if v, ok := img.Info().Details["header_checksum_valid"]; !ok || v != false {
			t.Fatalf("details %v", img.Info().Details)
		}
	})
}

// TestHugeEmpty maps a 2040 GiB empty image (the VHD maximum) in one
// Extent call.
func TestHugeEmpty(t *testing.T) {
	testutil.Need(t, "qemu-img")
	path := tempPath(t, "huge.vhd")
	testutil.QemuImg(t, "create", "-q", "-f", "vpc", "-o", "force_size=on", path, "2040G")
	img, err := open(t, path, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	e, err := img.Extent(0, img.Size())
	if err != nil || e.Length != img.Size() || !e.Zero {
		t.Fatalf("Extent = %+v, %v", e, err)
	}
	t.Logf("%d GiB empty image mapped in %v", img.Size()>>30, time.Since(t0))
	b := make([]byte, 4<<20)
	if n, err := img.ReadAt(b, img.Size()-int64(len(b))); n != len(b) || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if n, err := img.ReadAt(b, img.Size()-10); n != 10 || err != io.EOF {
		t.Fatalf("ReadAt at the end = %d, %v", n, err)
	}
	if _, err := img.Extent(img.Size()-10, 11); err == nil {
		t.Fatal("Extent past the end: no error")
	}
}
