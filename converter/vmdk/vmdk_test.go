package vmdk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/internal/testutil"
)

// TestQemuSubformats converts pattern data with qemu-img into each
// subformat and checks size and content against qemu-img's own reading.
func TestQemuSubformats(t *testing.T) {
	testutil.Need(t, "qemu-img")
	const mib = 1 << 20
	tests := []struct {
		name      string
		size      int64
		opts      string
		subformat string
		extents   int
	}{
		{"monolithicSparse", 4 * mib, "subformat=monolithicSparse", "monolithicSparse", 1},
		{"monolithicSparse/partial-grain", 3*mib + 1536, "subformat=monolithicSparse", "monolithicSparse", 1},
		{"monolithicSparse/odd-bytes", 1000001, "subformat=monolithicSparse", "monolithicSparse", 1},
		{"monolithicSparse/compat6-zeroed", 2 * mib, "subformat=monolithicSparse,compat6=on,zeroed_grain=on,adapter_type=lsilogic", "monolithicSparse", 1},
		{"streamOptimized", 4 * mib, "subformat=streamOptimized", "streamOptimized", 1},
		{"streamOptimized/partial-grain", 3*mib + 1536, "subformat=streamOptimized", "streamOptimized", 1},
		{"streamOptimized/odd-bytes", 1000001, "subformat=streamOptimized", "streamOptimized", 1},
		{"monolithicFlat", 3*mib + 1536, "subformat=monolithicFlat", "monolithicFlat", 1},
		{"twoGbMaxExtentSparse", 3*mib + 1536, "subformat=twoGbMaxExtentSparse", "twoGbMaxExtentSparse", 1},
		{"twoGbMaxExtentFlat", 3*mib + 1536, "subformat=twoGbMaxExtentFlat", "twoGbMaxExtentFlat", 1},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			raw := filepath.Join(dir, "src.raw")
			testutil.Pattern(t, raw, tc.size, int64(i+1))
			path := filepath.Join(dir, "disk.vmdk")
			testutil.QemuImg(t, "convert", "-f", "raw", "-O", "vmdk", "-o", tc.opts, raw, path)

			wantSum, wantSize := testutil.ReferenceSHA256(t, path, "vmdk")
			img := mustOpen(t, path)
			if img.Size() != wantSize || img.Size() != qemuVirtualSize(t, path) {
				t.Fatalf("size %d, qemu-img: %d", img.Size(), wantSize)
			}
			if got := testutil.ImageSHA256(t, img); got != wantSum {
				t.Fatalf("sha256 %s, qemu-img %s", got, wantSum)
			}
			in := img.Info()
			if in.Subformat != tc.subformat || in.VirtualSize != wantSize || len(in.Extents) != tc.extents {
				t.Errorf("info: subformat %q size %d extents %d", in.Subformat, in.VirtualSize, len(in.Extents))
			}
			if strings.Contains(tc.subformat, "Sparse") || tc.subformat == "streamOptimized" {
				if in.ClusterSize != 64<<10 || in.AllocatedBytes <= 0 || in.AllocatedBytes > wantSize {
					t.Errorf("info: cluster %d allocated %d", in.ClusterSize, in.AllocatedBytes)
				}
			}
			if (in.Compression == "deflate") != (tc.subformat == "streamOptimized") {
				t.Errorf("info: compression %q", in.Compression)
			}
		})
	}
}

// TestQemuBigSplit uses real 2 GiB splits: a disk of 2 GiB + 1 MiB has two
// extents, and data written across the boundary must read back through
// both (and the extent map must merge across it).
func TestQemuBigSplit(t *testing.T) {
	if testing.Short() {
		t.Skip("2 GiB virtual disks")
	}
	testutil.Need(t, "qemu-io")
	for _, sub := range []string{"twoGbMaxExtentSparse", "twoGbMaxExtentFlat"} {
		t.Run(sub, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "big.vmdk")
			testutil.QemuImg(t, "create", "-q", "-f", "vmdk", "-o", "subformat="+sub, path, "2049M")
			testutil.QemuIO(t, path, "vmdk",
				"write -P 0x11 0 64k",
				"write -P 0x5a 2047M 2M",
				"write -P 0x33 2048M 4k",
				fmt.Sprintf("write -P 0x44 %d 512", 2049<<20-512))
			img := compareWithQemu(t, path)
			if n := len(img.Info().Extents); n != 2 {
				t.Fatalf("%d extents, want 2", n)
			}
			if sub == "twoGbMaxExtentSparse" {
				e, err := img.Extent(2047<<20, 4<<20)
				if err != nil {
					t.Fatal(err)
				}
				if !e.Allocated || e.Zero || e.Length != 2<<20 {
					t.Fatalf("extent across the split: %+v, want 2 MiB allocated", e)
				}
			}
		})
	}
}

// TestHandWrittenDescriptors covers descriptors qemu-img does not create:
// flat extents with offsets, split files, VMFS extents, CRLF lines.
func TestHandWrittenDescriptors(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	a := pattern(t, filepath.Join(dir, "a.bin"), 1<<20, 11)
	b := pattern(t, filepath.Join(dir, "b.bin"), 2<<20, 12)
	pattern(t, filepath.Join(dir, "c.bin"), 512<<10+1536, 13)
	head := "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=%q\n\n# Extent description\n"
	tests := []struct{ name, createType, extents string }{
		{"flat-offsets", "monolithicFlat", "RW 2048 FLAT \"a.bin\" 0\nRW 1024 FLAT \"b.bin\" 2048\nRW 1024 FLAT \"b.bin\" 0\nRW 7 FLAT \"a.bin\" 3\n"},
		{"fake-twoGbMaxExtentFlat", "twoGbMaxExtentFlat", "RW 2048 FLAT \"a.bin\" 0\nRW 4096 FLAT \"b.bin\" 0\nRW 1027 FLAT \"c.bin\" 0\n"},
		{"vmfs", "vmfs", "RW 4096 VMFS \"b.bin\"\n"},
		{"crlf", "monolithicFlat", "RW 2048 FLAT \"a.bin\" 0\r\nRW 4096 FLAT \"b.bin\" 0\r\n"},
		{"tabs-and-ddb", "twoGbMaxExtentFlat", "RW\t2048\tFLAT\t\"a.bin\"\t0\n\n# The Disk Data Base\n#DDB\nddb.adapterType = \"lsilogic\"\nddb.virtualHWVersion = \"14\"\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			text := fmt.Sprintf(head, tc.createType) + tc.extents
			if tc.name == "crlf" {
				text = strings.ReplaceAll(text, "\n", "\r\n")
			}
			path := writeFile(t, filepath.Join(dir, tc.name+".vmdk"), []byte(text))
			img := compareWithQemu(t, path)
			if img.Info().Subformat != tc.createType {
				t.Errorf("subformat %q", img.Info().Subformat)
			}
		})
	}

	// ZERO and RDONLY extents: qemu 7.2 skips them (shifting what follows),
	// VMware reads zeros and data; ferry follows VMware.
	t.Run("zero-and-rdonly", func(t *testing.T) {
		text := fmt.Sprintf(head, "monolithicFlat") +
			"RW 2048 FLAT \"a.bin\" 0\nRW 2048 ZERO\nRDONLY 1024 FLAT \"b.bin\" 1024\nRW 100 ZERO\n"
		path := writeFile(t, filepath.Join(dir, "zero.vmdk"), []byte(text))
		img := mustOpen(t, path)
		want := append(append(append(append([]byte{}, a...), make([]byte, 1<<20)...), b[512<<10:1<<20]...), make([]byte, 100*512)...)
		if img.Size() != int64(len(want)) {
			t.Fatalf("size %d, want %d", img.Size(), len(want))
		}
		compareReader(t, img, bytes.NewReader(want), img.Size())
		checkExtents(t, img)
		e, err := img.Extent(1<<20, 4<<20)
		if err != nil || !e.Zero || e.Length != 1<<20 {
			t.Fatalf("zero extent: %+v, %v", e, err)
		}
		in := img.Info()
		if len(in.Extents) != 4 || in.Extents[1].Type != "ZERO" || in.Extents[2].Access != "RDONLY" || in.Extents[2].Offset != 1024 {
			t.Errorf("info extents: %+v", in.Extents)
		}
	})

	// A split made of small sparse files (qemu makes monolithicSparse files
	// that are valid SPARSE extents). Extents that end inside a grain are
	// compared with the source data: qemu reads the rest of that grain
	// past the extent's end (its read stops at grain boundaries only), so
	// the next extent starts with the wrong bytes there.
	for _, split := range []struct {
		name  string
		sizes []int64
	}{
		{"fake-twoGbMaxExtentSparse", []int64{1 << 20, 2 << 20, 512<<10 + 1536}},
		{"fake-twoGbMaxExtentSparse-unaligned", []int64{1 << 20, 2<<20 + 1536, 512 << 10}},
	} {
		t.Run(split.name, func(t *testing.T) {
			d := t.TempDir()
			var ext strings.Builder
			var all []byte
			for i, size := range split.sizes {
				raw := filepath.Join(d, fmt.Sprintf("p%d.raw", i))
				all = append(all, pattern(t, raw, size, int64(20+i))...)
				name := fmt.Sprintf("disk-s%03d.vmdk", i+1)
				testutil.QemuImg(t, "convert", "-f", "raw", "-O", "vmdk", raw, filepath.Join(d, name))
				fmt.Fprintf(&ext, "RW %d SPARSE %q\n", (size+511)/512, name)
			}
			path := writeFile(t, filepath.Join(d, "disk.vmdk"), []byte(fmt.Sprintf(head, "twoGbMaxExtentSparse")+ext.String()))
			var img *Image
			if strings.HasSuffix(split.name, "unaligned") {
				img = mustOpen(t, path)
				if img.Size() != int64(len(all)) {
					t.Fatalf("size %d, want %d", img.Size(), len(all))
				}
				compareReader(t, img, bytes.NewReader(all), img.Size())
				checkExtents(t, img)
			} else {
				img = compareWithQemu(t, path)
			}
			if n := len(img.Info().Extents); n != 3 {
				t.Fatalf("%d extents", n)
			}
		})
	}

	// vmfsThin (ESXi) is a flat file for a reader; qemu refuses the
	// createType, so compare with the file itself.
	t.Run("vmfsThin", func(t *testing.T) {
		path := writeFile(t, filepath.Join(dir, "thin.vmdk"), []byte(fmt.Sprintf(head, "vmfsThin")+"RW 4096 VMFS \"b.bin\"\n"))
		img := mustOpen(t, path)
		compareReader(t, img, bytes.NewReader(b), int64(len(b)))
	})
}

// TestVMwareStreams reads stream-optimized files laid out like VMware's
// (GD at the end, footer, metadata markers) in several variants.
func TestVMwareStreams(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	data := pattern(t, filepath.Join(dir, "p.raw"), 3<<20+1536, 5)
	tests := []struct {
		name string
		o    buildOpts
	}{
		{"gd-at-end", buildOpts{stream: true}},
		{"gd-in-header", buildOpts{stream: true, gdInHeader: true}},
		{"small-grains-tables", buildOpts{stream: true, grainSectors: 8, gtes: 64}},
		{"no-markers", buildOpts{stream: true, noMarkers: true}},
		{"omit-empty-tables", buildOpts{stream: true, grainSectors: 8, gtes: 16, omitEmptyGTs: true}},
		{"zeroed-grains", buildOpts{stream: true, zeroGrain: true, zeroGrains: []int64{0, 7, 40}, version: 3}},
		{"sparse-small-grains", buildOpts{grainSectors: 16, gtes: 128, omitEmptyGTs: true}},
		{"sparse-zeroed-grains", buildOpts{version: 2, zeroGrain: true, zeroGrains: []int64{1, 2, 3, 47}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, filepath.Join(dir, tc.name+".vmdk"), buildSparse(t, data, tc.o))
			var img *Image
			if tc.o.noMarkers {
				// qemu passes one grain of input to uncompress() when there
				// are no markers, so it fails on incompressible grains
				// (deflate makes them slightly larger); compare with the
				// source instead.
				img = mustOpen(t, path)
				compareReader(t, img, bytes.NewReader(data), int64(len(data)))
			} else {
				img = compareWithQemu(t, path)
			}
			wantSub := "monolithicSparse"
			if tc.o.stream {
				wantSub = "streamOptimized"
			}
			if img.Info().Subformat != wantSub {
				t.Errorf("subformat %q", img.Info().Subformat)
			}
		})
	}
}

// TestHugeEmpty: mapping a big empty disk must not read much.
func TestHugeEmpty(t *testing.T) {
	dir := t.TempDir()
	// 1 TiB with absent grain tables, 4 KiB of data at 512 GiB.
	path := writeFile(t, filepath.Join(dir, "tib.vmdk"), buildSparse(t, nil, buildOpts{capacity: 1 << 40, omitEmptyGTs: true}))
	img := mustOpen(t, path)
	start := time.Now()
	e, err := img.Extent(0, img.Size())
	if err != nil || e.Length != 1<<40 || !e.Zero || e.Allocated {
		t.Fatalf("Extent = %+v, %v", e, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("mapping 1 TiB took %v", d)
	}
	// qemu preallocates every grain table: found empty once, they are
	// skipped afterwards.
	if _, err := exec.LookPath("qemu-img"); err == nil {
		p := filepath.Join(dir, "q.vmdk")
		testutil.QemuImg(t, "create", "-q", "-f", "vmdk", p, "64G")
		img := mustOpen(t, p)
		for range 2 {
			e, err := img.Extent(0, img.Size())
			if err != nil || e.Length != 64<<30 || !e.Zero {
				t.Fatalf("Extent = %+v, %v", e, err)
			}
		}
	}
}

// TestDelta opens delta disks through their parent.
func TestDelta(t *testing.T) {
	testutil.Need(t, "qemu-io")
	dir := t.TempDir()
	raw := filepath.Join(dir, "base.raw")
	testutil.Pattern(t, raw, 4<<20, 3)
	base := filepath.Join(dir, "base.vmdk")
	testutil.QemuImg(t, "convert", "-f", "raw", "-O", "vmdk", raw, base)

	t.Run("child", func(t *testing.T) {
		child := filepath.Join(dir, "child.vmdk")
		testutil.QemuImg(t, "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", child)
		testutil.QemuIO(t, child, "vmdk", "write -P 0x33 64k 128k", "write -P 0x44 3M 4k")
		img := compareWithQemu(t, child)
		in := img.Info()
		if in.Backing != "base.vmdk" || in.BackingInfo == nil || in.BackingInfo.VirtualSize != 4<<20 {
			t.Errorf("info backing %q %+v", in.Backing, in.BackingInfo)
		}
	})
	t.Run("zeroed-grains-hide-parent", func(t *testing.T) {
		child := filepath.Join(dir, "zchild.vmdk")
		testutil.QemuImg(t, "create", "-q", "-f", "vmdk", "-o", "zeroed_grain=on", "-b", "base.vmdk", "-F", "vmdk", child)
		testutil.QemuIO(t, child, "vmdk", "write -z 0 256k", "write -P 0x55 1M 64k")
		img := compareWithQemu(t, child)
		e, err := img.Extent(0, 1<<20)
		if err != nil || !e.Zero || !e.Allocated || e.Length != 256<<10 {
			t.Fatalf("zeroed extent %+v, %v", e, err)
		}
	})
	t.Run("larger-child", func(t *testing.T) {
		child := filepath.Join(dir, "lchild.vmdk")
		testutil.QemuImg(t, "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", child, "6M")
		testutil.QemuIO(t, child, "vmdk", "write -P 0x66 5M 64k")
		compareWithQemu(t, child)
	})
	t.Run("cid-mismatch", func(t *testing.T) {
		d := t.TempDir()
		b, _ := os.ReadFile(base)
		i := bytes.Index(b, []byte("\nCID=")) + 5
		n := bytes.IndexByte(b[i:], '\n')
		b2 := bytes.Clone(b)
		// qemu writes the CID with %x: 1 to 8 digits. Change every digit,
		// keeping the length (the descriptor sits in a fixed area).
		for k := i; k < i+n; k++ {
			if b2[k] == '0' {
				b2[k] = '1'
			} else {
				b2[k] = '0'
			}
		}
		writeFile(t, filepath.Join(d, "base.vmdk"), b2)
		child := filepath.Join(d, "child.vmdk")
		// The child records the original CID.
		testutil.QemuImg(t, "create", "-q", "-f", "vmdk", "-b", base, "-F", "vmdk", filepath.Join(d, "tmp.vmdk"))
		c, _ := os.ReadFile(filepath.Join(d, "tmp.vmdk"))
		c = bytes.Replace(c, []byte(base), []byte("base.vmdk"), 1)
		writeFile(t, child, c)
		if _, err := openPath(t, child); !errors.Is(err, format.ErrCorrupt) || !strings.Contains(err.Error(), "CID") {
			t.Fatalf("err = %v, want a CID mismatch", err)
		}
	})
	t.Run("loop", func(t *testing.T) {
		d := t.TempDir()
		pattern(t, filepath.Join(d, "a.bin"), 64<<10, 1)
		p := writeFile(t, filepath.Join(d, "loop.vmdk"), []byte("# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=1\ncreateType=\"monolithicFlat\"\nparentFileNameHint=\"loop.vmdk\"\nRW 128 FLAT \"a.bin\" 0\n"))
		if _, err := openPath(t, p); !errors.Is(err, format.ErrReferenceLoop) {
			t.Fatalf("err = %v, want ErrReferenceLoop", err)
		}
	})
	t.Run("no-opener", func(t *testing.T) {
		f, err := format.OpenFile(filepath.Join(dir, "child.vmdk"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		o := openOpts(t, dir)
		o.Open = nil
		if _, err := Open(f, o); !errors.Is(err, format.ErrUnsupported) {
			t.Fatalf("err = %v, want ErrUnsupported", err)
		}
	})
}

// TestBadInputs: broken and hostile images fail with the right error kind
// and no panic.
func TestBadInputs(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	raw := filepath.Join(dir, "p.raw")
	data := pattern(t, raw, 2<<20, 9)
	sparse := filepath.Join(dir, "sparse.vmdk")
	testutil.QemuImg(t, "convert", "-f", "raw", "-O", "vmdk", raw, sparse)
	stream := filepath.Join(dir, "stream.vmdk")
	testutil.QemuImg(t, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, stream)
	sb, _ := os.ReadFile(sparse)
	gdAt := int(binary.LittleEndian.Uint64(sb[56:]) * 512)
	stb, _ := os.ReadFile(stream)
	vmw := buildSparse(t, data, buildOpts{stream: true})

	patch := func(b []byte, off int, v []byte) []byte {
		c := bytes.Clone(b)
		copy(c[off:], v)
		return c
	}
	le64 := func(v uint64) []byte {
		b := make([]byte, 8)
		for i := range b {
			b[i] = byte(v >> (8 * i))
		}
		return b
	}
	// The first compressed grain of the qemu stream: its marker is at the
	// overhead (sector 128).
	corruptGrain := patch(stb, 128*512+12+40, bytes.Repeat([]byte{0xa5}, 64))
	garbage := make([]byte, 64<<10)
	for i := range garbage {
		garbage[i] = byte(i*7919 + i>>8)
	}
	copy(garbage, magicKDMV)
	copy(garbage[4:], []byte{1, 0, 0, 0})

	flat := func(name string) []byte {
		return []byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 128 FLAT \"" + name + "\" 0\n")
	}
	outside := filepath.Join(t.TempDir(), "outside.bin")
	writeFile(t, outside, make([]byte, 64<<10))
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o755)
	if err := os.Symlink(outside, filepath.Join(sub, "link.bin")); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		data    []byte
		inSub   bool
		want    error // at Open, or at read when read is set
		read    bool
		mention string
	}{
		{"header-only", sb[:512], false, format.ErrCorrupt, false, ""},
		{"gd-cut", sb[:gdAt+2], false, format.ErrCorrupt, false, "truncated"},
		{"grain-cut", sb[:len(sb)-100<<10], false, format.ErrCorrupt, true, ""},
		{"stream-grain-cut", stb[:len(stb)/2], false, format.ErrCorrupt, true, ""},
		{"vmware-stream-cut", vmw[:len(vmw)/2], false, format.ErrCorrupt, false, "footer"},
		{"gd-beyond-eof", patch(sb, 56, le64(1<<40)), false, format.ErrCorrupt, false, "grain directory"},
		{"gt-beyond-eof", patch(sb, gdAt, []byte{0, 0, 0, 0x10}), false, format.ErrCorrupt, false, "grain table"},
		{"capacity-2^62", patch(sb, 12, le64(1<<62)), false, format.ErrCorrupt, false, "capacity"},
		{"grain-size-3", patch(sb, 20, le64(3)), false, format.ErrCorrupt, false, "grain size"},
		{"grain-size-huge", patch(sb, 20, le64(1<<30)), false, format.ErrCorrupt, false, "grain size"},
		{"gtes-0", patch(sb, 44, []byte{0, 0, 0, 0}), false, format.ErrCorrupt, false, "grain table"},
		{"gtes-4096", patch(sb, 44, []byte{0, 0x10, 0, 0}), false, format.ErrCorrupt, false, "grain table"},
		{"version-4", patch(sb, 4, []byte{4}), false, format.ErrUnsupported, false, "version"},
		{"compression-7", patch(stb, 77, []byte{7}), false, format.ErrUnsupported, false, "compression"},
		{"corrupt-compressed-grain", corruptGrain, false, format.ErrCorrupt, true, ""},
		{"kdmv-garbage", garbage, false, errBadImage, false, ""},
		{"cowd", append([]byte("COWD\x01\x00\x00\x00"), make([]byte, 2048)...), false, format.ErrUnsupported, false, "COWD"},
		{"not-vmdk", bytes.Repeat([]byte{0x90, 0, 0xff, 3}, 1024), false, format.ErrWrongType, false, ""},
		{"etc-passwd", []byte("# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"/etc/passwd\" 0\n"), false, format.ErrUnsafeReference, false, "/etc/passwd"},
		{"dotdot", flat("../x"), false, format.ErrUnsafeReference, false, "../x"},
		{"dotdot-from-sub", flat("../../x.bin"), true, format.ErrUnsafeReference, false, "../../x.bin"},
		{"symlink-out", flat("link.bin"), true, format.ErrUnsafeReference, false, "link.bin"},
		{"missing-extent", flat("nothere-flat.vmdk"), false, fs.ErrNotExist, false, "nothere-flat.vmdk"},
		{"short-flat", []byte("# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 8192 FLAT \"p.raw\" 0\n"), false, format.ErrCorrupt, false, "truncated"},
		{"no-createType", []byte("# Disk DescriptorFile\nRW 8 FLAT \"p.raw\" 0\n"), false, format.ErrCorrupt, false, "createType"},
		{"no-extents", []byte("# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\n"), false, format.ErrCorrupt, false, "no extents"},
		{"bad-extent-line", []byte("# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 8 FLAT p.raw 0\n"), false, format.ErrCorrupt, false, "quoted"},
		{"flat-no-offset", []byte("# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"p.raw\"\n"), false, format.ErrCorrupt, false, "offset"},
		{"vmfssparse", []byte("# Disk DescriptorFile\ncreateType=\"vmfsSparse\"\nRW 8 VMFSSPARSE \"p.raw\"\n"), false, format.ErrUnsupported, false, "VMFSSPARSE"},
		{"rdm", []byte("# Disk DescriptorFile\ncreateType=\"vmfsRDM\"\nRW 8 VMFSRDM \"p.raw\"\n"), false, format.ErrUnsupported, false, "vmfsRDM"},
		{"noaccess", []byte("# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nNOACCESS 8 FLAT \"p.raw\" 0\n"), false, format.ErrUnsupported, false, "NOACCESS"},
		{"sparse-extent-not-sparse", []byte("# Disk DescriptorFile\ncreateType=\"twoGbMaxExtentSparse\"\nRW 8 SPARSE \"p.raw\"\n"), false, format.ErrCorrupt, false, "p.raw"},
		{"sum-too-big", []byte("# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 72057594037927935 ZERO\nRW 72057594037927935 ZERO\n"), false, format.ErrCorrupt, false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := dir
			if tc.inSub {
				d = sub
			}
			path := writeFile(t, filepath.Join(d, tc.name+".vmdk"), tc.data)
			img, err := openPath(t, path)
			if tc.read && err == nil {
				err = readAll(img)
			}
			if tc.want == errBadImage && (errors.Is(err, format.ErrCorrupt) || errors.Is(err, format.ErrUnsupported)) {
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if tc.mention != "" && !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}

	t.Run("nil-resolver", func(t *testing.T) {
		f := newMemFile(filepath.Join(dir, "d.vmdk"), flat("p.raw"))
		if _, err := Open(f, format.Options{}); !errors.Is(err, format.ErrUnsafeReference) || !strings.Contains(err.Error(), "p.raw") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("closes-on-failure", func(t *testing.T) {
		// The first extent opens, the second is refused: the first must be
		// closed again; the descriptor itself stays with the caller.
		text := []byte("# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 128 FLAT \"p.raw\" 0\nRW 8 FLAT \"/etc/passwd\" 0\n")
		res := &trackingResolver{Resolver: openOpts(t, dir).Resolver}
		top := newMemFile(filepath.Join(dir, "partial.vmdk"), text)
		if _, err := Open(top, format.Options{Resolver: res}); !errors.Is(err, format.ErrUnsafeReference) {
			t.Fatalf("err = %v", err)
		}
		if len(res.files) != 1 || !res.files[0].closed || top.closed {
			t.Fatalf("opened %d files, first closed: %v, top closed: %v", len(res.files), len(res.files) > 0 && res.files[0].closed, top.closed)
		}
	})
	t.Run("close-closes-all", func(t *testing.T) {
		text := []byte("# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 128 FLAT \"p.raw\" 0\nRW 8 FLAT \"sparse.vmdk\" 0\nRW 8 FLAT \"p.raw\" 8\n")
		res := &trackingResolver{Resolver: openOpts(t, dir).Resolver}
		top := newMemFile(filepath.Join(dir, "all.vmdk"), text)
		img, err := Open(top, format.Options{Resolver: res})
		if err != nil {
			t.Fatal(err)
		}
		img.Close()
		if len(res.files) != 2 || !res.files[0].closed || !res.files[1].closed || !top.closed {
			t.Fatalf("%d files opened (p.raw once), all closed: %v", len(res.files), res.files)
		}
	})
}

// trackingResolver records the files it opens.
type trackingResolver struct {
	format.Resolver
	files []*trackedFile
}

type trackedFile struct {
	format.File
	closed bool
}

func (r *trackingResolver) Open(from, ref string) (format.File, error) {
	f, err := r.Resolver.Open(from, ref)
	if err != nil {
		return nil, err
	}
	tf := &trackedFile{File: f}
	r.files = append(r.files, tf)
	return tf, nil
}

func (f *trackedFile) Close() error { f.closed = true; return f.File.Close() }

// errBadImage stands for ErrCorrupt or ErrUnsupported, whichever check
// a garbage header trips first.
var errBadImage = errors.New("corrupt or unsupported")

func readAll(img format.Image) error {
	buf := make([]byte, 1<<20)
	for off := int64(0); off < img.Size(); off += int64(len(buf)) {
		if _, err := img.ReadAt(buf, off); err != nil && err != io.EOF {
			return err
		}
	}
	return nil
}

func TestProbe(t *testing.T) {
	dir := t.TempDir()
	data := pattern(t, filepath.Join(dir, "p.raw"), 1<<20, 2)
	yes := map[string][]byte{
		"sparse":         buildSparse(t, data, buildOpts{}),
		"stream":         buildSparse(t, data, buildOpts{stream: true}),
		"descriptor":     []byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"a\" 0\n"),
		"descriptor-ws":  []byte("\n\n  # Disk DescriptorFile\r\nversion=1\r\n"),
		"no-comment":     []byte("version=1\nCID=fffffffe\ncreateType=\"vmfs\"\nRW 8 VMFS \"a-flat.vmdk\"\n"),
		"cowd":           append([]byte("COWD\x01\x00\x00\x00"), make([]byte, 512)...),
		"nul-padded":     append([]byte("# Disk DescriptorFile\ncreateType=\"vmfs\"\n"), make([]byte, 1000)...),
		"utf8-file-name": []byte("# Disk DescriptorFile\ncreateType=\"vmfs\"\nRW 8 VMFS \"disque-éte.vmdk\"\n"),
	}
	no := map[string][]byte{
		"raw":             data,
		"zeros":           make([]byte, 8192),
		"tiny":            []byte("KDM"),
		"kdmv-bad-ver":    append([]byte("KDMV\x07\x01\x00\x00"), make([]byte, 504)...),
		"text":            []byte("hello world\nthis is not a disk\n"),
		"createType-late": append(bytes.Repeat([]byte("x"), 5000), []byte("\ncreateType=\"vmfs\"\n")...),
		"binary-with-key": append([]byte("createType=\"vmfs\"\n\x00\x01\x02"), data[:4096]...),
		"elf":             append([]byte("\x7fELF\x02\x01\x01"), make([]byte, 4096)...),
		"qcow2":           append([]byte("QFI\xfb\x00\x00\x00\x03"), make([]byte, 4096)...),
	}
	for name, b := range yes {
		if !Probe(bytes.NewReader(b), int64(len(b))) {
			t.Errorf("Probe(%s) = false", name)
		}
	}
	for name, b := range no {
		if Probe(bytes.NewReader(b), int64(len(b))) {
			t.Errorf("Probe(%s) = true", name)
		}
	}
	big := make([]byte, 2<<20)
	copy(big, "# Disk DescriptorFile\n")
	if Probe(bytes.NewReader(big), int64(len(big))) {
		t.Error("Probe accepted a 2 MiB text-looking file")
	}
}

// TestConcurrentReads reads random ranges from several goroutines (run
// with -race) and compares with the source data.
func TestConcurrentReads(t *testing.T) {
	dir := t.TempDir()
	data := pattern(t, filepath.Join(dir, "p.raw"), 6<<20+1536, 17)
	for _, o := range []buildOpts{{stream: true, grainSectors: 16, gtes: 32}, {grainSectors: 8, gtes: 64}} {
		img, err := Open(newMemFile("m.vmdk", buildSparse(t, data, o)), format.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				seed := uint64(w*7919 + 1)
				buf := make([]byte, 3<<20)
				for range 40 {
					seed = seed*6364136223846793005 + 1442695040888963407
					off := int64(seed>>20) % int64(len(data))
					n := int64(seed>>7)%int64(len(buf)) + 1
					n = min(n, int64(len(data))-off)
					m, err := img.ReadAt(buf[:n], off)
					if int64(m) != n || err != nil && err != io.EOF {
						errs <- fmt.Errorf("ReadAt(%d, %d) = %d, %v", n, off, m, err)
						return
					}
					if !bytes.Equal(buf[:n], data[off:off+n]) {
						errs <- fmt.Errorf("ReadAt(%d, %d): wrong data", n, off)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if m, err := img.ReadAt(make([]byte, 10), img.Size()); m != 0 || err != io.EOF {
			t.Errorf("read at end: %d, %v", m, err)
		}
		if _, err := img.Extent(img.Size(), 1); err == nil {
			t.Error("Extent past the end succeeded")
		}
		img.Close()
	}
}

func TestInfo(t *testing.T) {
	dir := t.TempDir()
	data := pattern(t, filepath.Join(dir, "p.raw"), 1<<20, 4)
	path := writeFile(t, filepath.Join(dir, "x.vmdk"), buildSparse(t, data, buildOpts{stream: true}))
	img := mustOpen(t, path)
	in := img.Info()
	if in.Format != Type || in.Subformat != "streamOptimized" || in.VirtualSize != 1<<20 || in.ClusterSize != 64<<10 ||
		in.Compression != "deflate" || in.FileSize != int64(len(mustRead(t, path))) {
		t.Errorf("info %+v", in)
	}
	if in.Details["cid"] != uint32(0x12345678) || in.Details["parent_cid"] != uint32(0xffffffff) ||
		in.Details["adapter_type"] != "lsilogic" || in.Details["hw_version"] != "7" || in.Details["version"] != uint32(3) {
		t.Errorf("details %v", in.Details)
	}
	if len(in.Extents) != 1 || in.Extents[0].File != "x.vmdk" || in.Extents[0].Sectors != 2048 || in.Extents[0].Type != "SPARSE" {
		t.Errorf("extents %+v", in.Extents)
	}
	if img.Type() != "vmdk" || img.Readable() != nil {
		t.Error("type/readable")
	}
}

func mustRead(t *testing.T, path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
