package vhd

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"unicode/utf16"

	"github.com/hikube/ferry/converter/format"
)

// vhdSpec describes a dynamic or differencing VHD built byte by byte:
// qemu-img cannot create differencing images, nor block sizes other than
// 2 MiB.
type vhdSpec struct {
	diskType    uint32 // diskDynamic or diskDifferencing
	creator     string // default "qem2": size from currentSize
	currentSize uint64
	cyls        uint16
	heads, secs uint8
	blockSize   uint32
	maxEntries  uint32 // 0: as many as the size needs
	uuid        [16]byte
	parentUUID  [16]byte
	parentName  string // written UTF-16BE
	locators    []locSpec
	blocks      map[int64]blockSpec
}

type locSpec struct {
	code string
	data []byte
}

// blockSpec is one allocated block: its sector bitmap (nil: all set) and
// its data (blockSize bytes).
type blockSpec struct {
	bitmap []byte
	data   []byte
}

func utf16le(s string) []byte {
	var b []byte
	for _, u := range utf16.Encode([]rune(s)) {
		b = binary.LittleEndian.AppendUint16(b, u)
	}
	return b
}

func roundUp(n, a int64) int64 { return (n + a - 1) / a * a }

func (s vhdSpec) footer() []byte {
	be := binary.BigEndian
	f := make([]byte, footerSize)
	copy(f, cookie)
	be.PutUint32(f[8:], 2)
	be.PutUint32(f[12:], 0x00010000)
	be.PutUint64(f[16:], 512)
	creator := s.creator
	if creator == "" {
		creator = "qem2"
	}
	copy(f[28:32], creator)
	be.PutUint32(f[32:], 0x00050003)
	copy(f[36:40], "Wi2k")
	be.PutUint64(f[40:], s.currentSize)
	be.PutUint64(f[48:], s.currentSize)
	be.PutUint16(f[56:], s.cyls)
	f[58], f[59] = s.heads, s.secs
	be.PutUint32(f[60:], s.diskType)
	copy(f[68:84], s.uuid[:])
	be.PutUint32(f[64:], checksum(f, 64))
	return f
}

// build lays out: footer copy, dynamic header, BAT, locator data, blocks
// (bitmap + data) in block order, footer.
func (s vhdSpec) build() []byte {
	be := binary.BigEndian
	bs := int64(s.blockSize)
	bmSize := bitmapBytes(bs, s.diskType == diskDifferencing)
	entries := int64(s.maxEntries)
	if entries == 0 {
		entries = (int64(s.currentSize) + bs - 1) / bs
	}
	batOff := int64(1536)
	pos := batOff + roundUp(entries*4, 512)
	hdr := make([]byte, dynHeaderSize)
	copy(hdr, "cxsparse")
	be.PutUint64(hdr[8:], ^uint64(0))
	be.PutUint64(hdr[16:], uint64(batOff))
	be.PutUint32(hdr[24:], 0x00010000)
	be.PutUint32(hdr[28:], uint32(entries))
	be.PutUint32(hdr[32:], s.blockSize)
	copy(hdr[40:56], s.parentUUID[:])
	for i, u := range utf16.Encode([]rune(s.parentName)) {
		be.PutUint16(hdr[64+2*i:], u)
	}
	var out bytes.Buffer
	put := func(off int64, b []byte) {
		if int64(out.Len()) < off+int64(len(b)) {
			out.Write(make([]byte, off+int64(len(b))-int64(out.Len())))
		}
		copy(out.Bytes()[off:], b)
	}
	for i, l := range s.locators {
		e := hdr[576+24*i:]
		copy(e[0:4], l.code)
		space := roundUp(int64(len(l.data)), 512)
		be.PutUint32(e[4:], uint32(space))
		be.PutUint32(e[8:], uint32(len(l.data)))
		be.PutUint64(e[16:], uint64(pos))
		put(pos, l.data)
		pos += max(space, 512)
	}
	be.PutUint32(hdr[36:], checksum(hdr, 36))
	bat := bytes.Repeat([]byte{0xff}, int(roundUp(entries*4, 512)))
	var idx []int64
	for bi := range s.blocks {
		idx = append(idx, bi)
	}
	sort.Slice(idx, func(i, j int) bool { return idx[i] < idx[j] })
	for _, bi := range idx {
		b := s.blocks[bi]
		be.PutUint32(bat[bi*4:], uint32(pos/512))
		bm := b.bitmap
		if bm == nil {
			bm = bytes.Repeat([]byte{0xff}, int(bmSize))
		}
		put(pos, bm)
		put(pos+bmSize, b.data)
		pos += bmSize + bs
	}
	ft := s.footer()
	put(0, ft)
	put(512, hdr)
	put(batOff, bat)
	put(pos, ft)
	return out.Bytes()
}

// setBits sets bits [from, to) of an MSB-first bitmap.
func setBits(bm []byte, from, to int) {
	for i := from; i < to; i++ {
		bm[i>>3] |= 0x80 >> (i & 7)
	}
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func writeFile(t testing.TB, path string, b []byte) string {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// open opens path with opts and closes the image at the end of the test.
func open(t testing.TB, path string, opts format.Options) (*Image, error) {
	t.Helper()
	f, err := format.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := Open(f, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	t.Cleanup(func() { img.Close() })
	return img, nil
}

// chainOpts allows references inside dir and opens nested images as VHD.
func chainOpts(t testing.TB, dir string) format.Options {
	t.Helper()
	res, err := format.NewDirResolver(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Close() })
	return format.Options{
		Resolver: res,
		Open: func(f format.File, _ format.Type, o format.Options) (format.Image, error) {
			img, err := Open(f, o)
			if err != nil {
				return nil, err
			}
			return img, nil
		},
	}
}

// patchFooters rewrites the footer copies of a VHD file (offset 0 when it
// holds one, and the end) through fn, recomputing the checksum.
func patchFooters(t testing.TB, path string, fn func(f []byte)) {
	t.Helper()
	d, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	offs := []int{len(d) - footerSize}
	if bytes.Equal(d[:8], cookie) && len(d) > footerSize {
		offs = append(offs, 0)
	}
	for _, o := range offs {
		f := d[o : o+footerSize]
		fn(f)
		binary.BigEndian.PutUint32(f[64:], checksum(f, 64))
	}
	writeFile(t, path, d)
}

func tempPath(t testing.TB, name string) string {
	return filepath.Join(t.TempDir(), name)
}

// memFile is a format.File over bytes, for fuzzing.
type memFile struct {
	*bytes.Reader
	name string
}

func (m memFile) Name() string { return m.name }
func (m memFile) Close() error { return nil }
