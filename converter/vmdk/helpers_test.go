package vmdk

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/internal/testutil"
)

// memFile is an in-memory format.File.
type memFile struct {
	name string
	*bytes.Reader
	closed bool
}

func newMemFile(name string, b []byte) *memFile {
	return &memFile{name: name, Reader: bytes.NewReader(b)}
}

func (m *memFile) Name() string { return m.name }
func (m *memFile) Close() error { m.closed = true; return nil }

// openOpts returns options confined to dir, opening parents with this
// package's Open.
func openOpts(t testing.TB, dir string) format.Options {
	t.Helper()
	res, err := format.NewDirResolver(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Close() })
	var opener format.OpenFunc
	opener = func(f format.File, _ format.Type, o format.Options) (format.Image, error) {
		return Open(f, o)
	}
	return format.Options{Resolver: res, Open: opener}
}

// openPath opens a VMDK on disk with references confined to its directory.
func openPath(t testing.TB, path string) (*Image, error) {
	t.Helper()
	f, err := format.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := Open(f, openOpts(t, filepath.Dir(path)))
	if err != nil {
		f.Close()
		return nil, err
	}
	t.Cleanup(func() { img.Close() })
	return img, nil
}

func mustOpen(t testing.TB, path string) *Image {
	t.Helper()
	img, err := openPath(t, path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	return img
}

// qemuVirtualSize asks qemu-img for the virtual size.
func qemuVirtualSize(t testing.TB, path string) int64 {
	t.Helper()
	out := testutil.QemuImg(t, "info", "--output=json", path)
	var v struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	return v.VirtualSize
}

// compareWithQemu checks size and content of the image at path against
// `qemu-img convert -O raw`, chunk by chunk (fast for big sparse images),
// and checks the extent map covers the disk.
func compareWithQemu(t *testing.T, path string) *Image {
	t.Helper()
	ref := filepath.Join(t.TempDir(), "ref.raw")
	testutil.QemuImg(t, "convert", "-f", "vmdk", "-O", "raw", path, ref)
	img := mustOpen(t, path)
	if want := qemuVirtualSize(t, path); img.Size() != want {
		t.Fatalf("size %d, qemu-img info says %d", img.Size(), want)
	}
	rf, err := os.Open(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	st, _ := rf.Stat()
	if st.Size() != img.Size() {
		t.Fatalf("size %d, qemu-img convert wrote %d", img.Size(), st.Size())
	}
	compareReader(t, img, rf, img.Size())
	checkExtents(t, img)
	return img
}

// compareReader compares img with want over [0, size). Chunks that are a
// hole in want (an *os.File written sparse by qemu-img) and a zero extent
// in img are skipped without reading, so big empty disks compare fast.
func compareReader(t *testing.T, img format.Image, want io.ReaderAt, size int64) {
	t.Helper()
	a := make([]byte, 4<<20+4096+17) // odd: crosses grains and extents
	b := make([]byte, len(a))
	wf, _ := want.(*os.File)
	for off := int64(0); off < size; off += int64(len(a)) {
		n := int(min(int64(len(a)), size-off))
		if wf != nil {
			if e, err := img.Extent(off, int64(n)); err == nil && e.Zero && e.Length == int64(n) {
				const seekData = 3
				if d, err := wf.Seek(off, seekData); errors.Is(err, syscall.ENXIO) || err == nil && d >= off+int64(n) {
					continue
				}
			}
		}
		if m, err := img.ReadAt(a[:n], off); m != n || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt(%d at %d) = %d, %v", n, off, m, err)
		}
		if _, err := want.ReadAt(b[:n], off); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !bytes.Equal(a[:n], b[:n]) {
			i := 0
			for a[i] == b[i] {
				i++
			}
			t.Fatalf("content differs from the reference at byte %d", off+int64(i))
		}
	}
}

// checkExtents walks the extent map: it must tile the disk, and zero
// extents must read as zeros (checked on their first 64 KiB).
func checkExtents(t *testing.T, img format.Image) {
	t.Helper()
	size := img.Size()
	buf := make([]byte, 64<<10)
	for off := int64(0); off < size; {
		e, err := img.Extent(off, size-off)
		if err != nil {
			t.Fatalf("Extent(%d): %v", off, err)
		}
		if e.Start != off || e.Length <= 0 || e.Start+e.Length > size {
			t.Fatalf("Extent(%d, %d) = %+v", off, size-off, e)
		}
		if e.Zero {
			n := min(e.Length, int64(len(buf)))
			if _, err := img.ReadAt(buf[:n], off); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if !bytes.Equal(buf[:n], make([]byte, n)) {
				t.Fatalf("zero extent %+v reads data", e)
			}
		}
		off += e.Length
	}
}

// pattern returns testutil.Pattern content of size bytes, written to path.
func pattern(t testing.TB, path string, size, seed int64) []byte {
	t.Helper()
	testutil.Pattern(t, path, size, seed)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// build options for hand-made sparse extents.
type buildOpts struct {
	grainSectors int64   // default 128
	gtes         int64   // default 512
	capacity     int64   // bytes; default len(data) rounded up to sectors
	stream       bool    // VMware stream layout: markers, GD at end, footer
	gdInHeader   bool    // stream: real GD offset in the header too
	noMarkers    bool    // stream: compressed grains without markers or metadata markers
	zeroGrain    bool    // set the zeroed-grain flag
	zeroGrains   []int64 // grains written as GTE 1
	omitEmptyGTs bool    // GD entry 0 for tables without grains
	desc         string  // descriptor ("" for a default one)
	descSectors  int64   // room for the descriptor, default 20
	align        int64   // monolithic: grains start aligned to this many sectors, default 128
	version      uint32
}

// buildSparse makes a hosted sparse extent holding data (all-zero grains
// stay unallocated).
func buildSparse(t testing.TB, data []byte, o buildOpts) []byte {
	t.Helper()
	if o.grainSectors == 0 {
		o.grainSectors = 128
	}
	if o.gtes == 0 {
		o.gtes = 512
	}
	if o.version == 0 {
		o.version = 1
		if o.stream {
			o.version = 3
		}
	}
	if o.capacity == 0 {
		o.capacity = int64(len(data))
	}
	le := binary.LittleEndian
	capSectors := (o.capacity + 511) / 512
	grain := o.grainSectors * 512
	nGrains := (capSectors + o.grainSectors - 1) / o.grainSectors
	nGT := (nGrains + o.gtes - 1) / o.gtes
	gtSectors := (o.gtes*4 + 511) / 512
	gdSectors := (nGT*4 + 511) / 512
	createType := "monolithicSparse"
	if o.stream {
		createType = "streamOptimized"
	}
	desc := o.desc
	if desc == "" {
		desc = fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=%q\n\n# Extent description\nRW %d SPARSE \"x.vmdk\"\n\nddb.adapterType = \"lsilogic\"\nddb.virtualHWVersion = \"7\"\n", createType, capSectors)
	}
	descSectors := o.descSectors
	if descSectors == 0 {
		descSectors = 20
	}
	if o.align == 0 {
		o.align = 128
	}
	hdr := func(gdOff, overhead uint64) []byte {
		h := make([]byte, 512)
		copy(h, magicKDMV)
		le.PutUint32(h[4:], o.version)
		flags := uint32(flagNLDetect)
		if o.stream {
			flags |= flagCompress
			if !o.noMarkers {
				flags |= flagMarkers
			}
		}
		if o.zeroGrain {
			flags |= flagZeroGrain
		}
		le.PutUint32(h[8:], flags)
		le.PutUint64(h[12:], uint64(capSectors))
		le.PutUint64(h[20:], uint64(o.grainSectors))
		le.PutUint64(h[28:], 1)
		le.PutUint64(h[36:], uint64(descSectors))
		le.PutUint32(h[44:], uint32(o.gtes))
		le.PutUint64(h[56:], gdOff)
		le.PutUint64(h[64:], overhead)
		copy(h[73:], "\n \r\n")
		if o.stream {
			le.PutUint16(h[77:], compressDeflate)
		}
		return h
	}
	// Grains with content: data grains that are not all zero, and the
	// zeroed grains.
	zeroG := map[int64]bool{}
	for _, g := range o.zeroGrains {
		zeroG[g] = true
	}
	grainData := func(g int64) []byte {
		b := make([]byte, min(grain, capSectors*512-g*grain))
		if g*grain < int64(len(data)) {
			copy(b, data[g*grain:])
		}
		return b
	}
	var grains []int64
	for g := int64(0); g < nGrains; g++ {
		if g*grain >= int64(len(data)) && !zeroG[g] {
			if len(zeroG) == 0 {
				break
			}
			continue
		}
		if zeroG[g] || !bytes.Equal(grainData(g), make([]byte, len(grainData(g)))) {
			grains = append(grains, g)
		}
	}
	usedGT := map[int64]bool{}
	for _, g := range grains {
		usedGT[g/o.gtes] = true
	}
	var gtList []int64 // tables present in the file
	for i := int64(0); i < nGT; i++ {
		if usedGT[i] || !o.omitEmptyGTs {
			gtList = append(gtList, i)
		}
	}
	gte := map[int64]uint32{}
	gd := make([]uint32, nGT)
	out := &bytes.Buffer{}
	pad := func() {
		for out.Len()%512 != 0 {
			out.WriteByte(0)
		}
	}
	gtBytes := func(gti int64) []byte {
		tbl := make([]byte, gtSectors*512)
		for j := int64(0); j < o.gtes; j++ {
			le.PutUint32(tbl[j*4:], gte[gti*o.gtes+j])
		}
		return tbl
	}
	if !o.stream {
		overhead := 1 + descSectors + gdSectors + int64(len(gtList))*gtSectors
		overhead = (overhead + o.align - 1) / o.align * o.align
		out.Write(hdr(uint64(1+descSectors), uint64(overhead)))
		out.WriteString(desc)
		out.Write(make([]byte, (1+descSectors)*512-int64(out.Len())))
		gdAt := out.Len()
		out.Write(make([]byte, gdSectors*512))
		gtAt := out.Len()
		out.Write(make([]byte, int64(len(gtList))*gtSectors*512))
		out.Write(make([]byte, overhead*512-int64(out.Len())))
		for k, gti := range gtList {
			gd[gti] = uint32(int64(gtAt)/512 + int64(k)*gtSectors)
		}
		for _, g := range grains {
			if zeroG[g] {
				gte[g] = 1
				continue
			}
			gte[g] = uint32(out.Len() / 512)
			b := grainData(g)
			out.Write(b)
			out.Write(make([]byte, grain-int64(len(b))))
		}
		img := out.Bytes()
		for i, v := range gd {
			le.PutUint32(img[gdAt+i*4:], v)
		}
		for k, gti := range gtList {
			copy(img[gtAt+k*int(gtSectors)*512:], gtBytes(gti))
		}
		return img
	}
	// Stream layout: header, descriptor, grains with a GT after each
	// table's grains, GD, footer, end-of-stream.
	overhead := uint64(1 + descSectors)
	headerLater := o.gdInHeader || o.noMarkers
	if headerLater {
		out.Write(make([]byte, 512)) // written once the GD offset is known
	} else {
		out.Write(hdr(gdAtEnd, overhead))
	}
	out.WriteString(desc)
	out.Write(make([]byte, int64(overhead)*512-int64(out.Len())))
	marker := func(val uint64, typ uint32) {
		m := make([]byte, 512)
		le.PutUint64(m, val)
		le.PutUint32(m[12:], typ)
		out.Write(m)
	}
	k := 0
	for _, gti := range gtList {
		for ; k < len(grains) && grains[k]/o.gtes == gti; k++ {
			g := grains[k]
			if zeroG[g] {
				gte[g] = 1
				continue
			}
			b := grainData(g)
			b = b[:(len(b)+511)/512*512]
			var z bytes.Buffer
			w := zlib.NewWriter(&z)
			w.Write(b)
			w.Close()
			gte[g] = uint32(out.Len() / 512)
			if !o.noMarkers {
				var m [12]byte
				le.PutUint64(m[:], uint64(g*o.grainSectors))
				le.PutUint32(m[8:], uint32(z.Len()))
				out.Write(m[:])
			}
			out.Write(z.Bytes())
			pad()
		}
		if !o.noMarkers {
			marker(uint64(gtSectors), markerGT)
		}
		gd[gti] = uint32(out.Len() / 512)
		out.Write(gtBytes(gti))
	}
	if !o.noMarkers {
		marker(uint64(gdSectors), markerGD)
	}
	gdOff := uint64(out.Len() / 512)
	tbl := make([]byte, gdSectors*512)
	for i, v := range gd {
		le.PutUint32(tbl[i*4:], v)
	}
	out.Write(tbl)
	if !o.noMarkers {
		marker(1, markerFooter)
		out.Write(hdr(gdOff, overhead))
		marker(0, markerEOS)
	}
	img := out.Bytes()
	if headerLater {
		copy(img, hdr(gdOff, overhead))
	}
	return img
}

func writeFile(t testing.TB, path string, b []byte) string {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
