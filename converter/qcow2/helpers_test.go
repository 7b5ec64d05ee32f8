package qcow2

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/internal/testutil"
)

// rawImage is a minimal raw reader for backing files in tests (the real raw
// package lives elsewhere).
type rawImage struct{ f format.File }

func (r *rawImage) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.f.Size() {
		return 0, io.EOF
	}
	return r.f.ReadAt(p, off)
}

func (r *rawImage) Extent(start, length int64) (format.Extent, error) {
	if start < 0 || length <= 0 || start+length > r.f.Size() {
		return format.Extent{}, fmt.Errorf("raw: extent out of range")
	}
	return format.Extent{Start: start, Length: length, Allocated: true}, nil
}

func (r *rawImage) Type() format.Type { return "raw" }
func (r *rawImage) Size() int64       { return r.f.Size() }
func (r *rawImage) Readable() error   { return nil }
func (r *rawImage) Close() error      { return r.f.Close() }

// testOpen is the nested opener: qcow2 by content, anything else raw.
func testOpen(f format.File, t format.Type, opts format.Options) (format.Image, error) {
	switch {
	case t == Type || (t == "" && Probe(f, f.Size())):
		img, err := Open(f, opts)
		if err != nil {
			return nil, err
		}
		return img, nil
	case t == "" || t == "raw":
		return &rawImage{f}, nil
	}
	return nil, format.Unsupportedf("test opener: format %q", t)
}

// openIn opens path with a resolver confined to dir.
func openIn(t testing.TB, path, dir string) (*Image, error) {
	t.Helper()
	res, err := format.NewDirResolver(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Close() })
	f, err := format.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := Open(f, format.Options{Resolver: res, Open: testOpen})
	if err != nil {
		f.Close()
		return nil, err
	}
	return img, nil
}

func mustOpen(t testing.TB, path string) *Image {
	t.Helper()
	img, err := openIn(t, path, filepath.Dir(path))
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

// qemuVirtualSize is qemu-img info's virtual-size.
func qemuVirtualSize(t testing.TB, path string) int64 {
	t.Helper()
	out := testutil.QemuImg(t, "info", "--output", "json", path)
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("qemu-img info %s: %v\n%s", path, err, out)
	}
	return info.VirtualSize
}

// checkImage compares ferry's view of path with qemu-img's.
func checkImage(t *testing.T, path string) *Image {
	t.Helper()
	img := mustOpen(t, path)
	if want := qemuVirtualSize(t, path); img.Size() != want {
		t.Fatalf("Size() = %d, qemu-img says %d", img.Size(), want)
	}
	want, wantSize := testutil.ReferenceSHA256(t, path, "qcow2")
	if wantSize != img.Size() {
		t.Fatalf("qemu-img convert wrote %d bytes, Size() = %d", wantSize, img.Size())
	}
	if got := testutil.ImageSHA256(t, img); got != want {
		t.Fatalf("sha256 = %s, qemu-img convert gives %s", got, want)
	}
	return img
}

func pattern(t testing.TB, dir, name string, size int64, seed int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	testutil.Pattern(t, p, size, seed)
	return p
}

// toQcow2 converts a raw file to qcow2 with -o opts (and extra args such as -c).
func toQcow2(t testing.TB, src, dst, opts string, extra ...string) string {
	t.Helper()
	args := append([]string{"convert", "-f", "raw", "-O", "qcow2"}, extra...)
	if opts != "" {
		args = append(args, "-o", opts)
	}
	testutil.QemuImg(t, append(args, src, dst)...)
	return dst
}

func create(t testing.TB, path, opts, size string, extra ...string) string {
	t.Helper()
	args := append([]string{"create", "-q", "-f", "qcow2"}, extra...)
	if opts != "" {
		args = append(args, "-o", opts)
	}
	testutil.QemuImg(t, append(args, path, size)...)
	return path
}

func qio(t testing.TB, path string, cmds ...string) {
	t.Helper()
	testutil.QemuIO(t, path, "qcow2", cmds...)
}

// patch writes v big-endian (4 or 8 bytes) at off.
func patch(t testing.TB, path string, off int64, v uint64, width int) {
	t.Helper()
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	testutil.WriteAt(t, path, off, b[8-width:])
}

func readBE(t testing.TB, path string, off int64, width int) uint64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 8)
	if _, err := f.ReadAt(b[8-width:], off); err != nil {
		t.Fatal(err)
	}
	return binary.BigEndian.Uint64(b)
}

// l2EntryOffset is the file offset of the (normal) L2 entry of virtual
// cluster n, which must be in the first L1 entry's table.
func l2EntryOffset(t testing.TB, path string, n int64) int64 {
	t.Helper()
	l1 := int64(readBE(t, path, 40, 8))
	l2 := int64(readBE(t, path, l1, 8) & l1OffsetMask)
	if l2 == 0 {
		t.Fatalf("%s: first L1 entry unallocated", path)
	}
	return l2 + 8*n
}

// dropBackingFormat turns the backing format extension into an unknown one
// (skipped by qemu and by us), as in images written by older tools.
func dropBackingFormat(t testing.TB, path string) {
	t.Helper()
	off := int64(readBE(t, path, 100, 4))
	for i := 0; i < 64; i++ {
		typ := readBE(t, path, off, 4)
		l := int64(readBE(t, path, off+4, 4))
		if typ == extEnd {
			break
		}
		if typ == extBackingFormat {
			patch(t, path, off, 0x0bad0bad, 4)
			return
		}
		off += 8 + (l+7)&^7
	}
	t.Fatalf("%s: no backing format extension", path)
}
