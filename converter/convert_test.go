package converter_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hikube/ferry/converter"
	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/internal/testutil"
)

// convertFile converts path with ferry (detection, readers, engine) into a
// sparse file and returns the result and the digest of what was written.
func convertFile(t *testing.T, path string, o converter.OpenOptions) (*converter.Result, string) {
	t.Helper()
	f, err := format.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := converter.Open(f, o)
	if err != nil {
		t.Fatalf("open %s: %v", filepath.Base(path), err)
	}
	defer img.Close()
	out := filepath.Join(t.TempDir(), "out.raw")
	dst, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := dst.Truncate(img.Size()); err != nil {
		t.Fatal(err)
	}
	res, err := converter.Convert(context.Background(), img, converter.Options{WriterAt: dst, Digest: true, Workers: 3})
	if err != nil {
		t.Fatalf("convert %s: %v", filepath.Base(path), err)
	}
	sum, size := testutil.SHA256File(t, out)
	if size != res.VirtualSize {
		t.Fatalf("output is %d bytes, virtual size %d", size, res.VirtualSize)
	}
	if sum != res.RawSHA256 {
		t.Fatalf("streamed digest %s differs from the written file's %s", res.RawSHA256, sum)
	}
	return res, sum
}

// TestConvertMatchesQemuImg converts one image of every format and
// subformat, made by qemu-img from the same data, and compares with
// qemu-img's own RAW.
func TestConvertMatchesQemuImg(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	const size = 24<<20 + 4096*3 // not a multiple of any cluster/block size
	testutil.Pattern(t, base, size, 7)

	cases := []struct {
		name, fmt, detect string
		opts              []string
	}{
		{"qcow2-v2", "qcow2", "qcow2", []string{"-o", "compat=0.10"}},
		{"qcow2-v3", "qcow2", "qcow2", nil},
		{"qcow2-zlib", "qcow2", "qcow2", []string{"-c"}},
		{"qcow2-zstd", "qcow2", "qcow2", []string{"-c", "-o", "compression_type=zstd"}},
		{"qcow2-extl2", "qcow2", "qcow2", []string{"-o", "extended_l2=on,cluster_size=128k"}},
		{"qcow2-512", "qcow2", "qcow2", []string{"-o", "cluster_size=512"}},
		{"qcow2-2M-prealloc", "qcow2", "qcow2", []string{"-o", "cluster_size=2M,preallocation=metadata"}},
		{"vmdk-sparse", "vmdk", "vmdk", []string{"-o", "subformat=monolithicSparse"}},
		{"vmdk-stream", "vmdk", "vmdk", []string{"-o", "subformat=streamOptimized"}},
		{"vmdk-flat", "vmdk", "vmdk", []string{"-o", "subformat=monolithicFlat"}},
		{"vmdk-2g-sparse", "vmdk", "vmdk", []string{"-o", "subformat=twoGbMaxExtentSparse"}},
		{"vmdk-2g-flat", "vmdk", "vmdk", []string{"-o", "subformat=twoGbMaxExtentFlat"}},
		{"vhd-dynamic", "vpc", "vpc", nil},
		{"vhd-fixed", "vpc", "vpc", []string{"-o", "subformat=fixed"}},
		{"vhdx-dynamic", "vhdx", "vhdx", nil},
		{"vhdx-fixed", "vhdx", "vhdx", []string{"-o", "subformat=fixed"}},
		{"vdi-dynamic", "vdi", "vdi", nil},
		{"vdi-static", "vdi", "vdi", []string{"-o", "static=on"}},
		{"raw", "raw", "raw", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, ok := lookupType(c.detect); !ok {
				t.Fatalf("format %s is not registered", c.detect)
			}
			sub := t.TempDir()
			img := filepath.Join(sub, "img."+c.fmt)
			args := append([]string{"convert", "-q", "-f", "raw", "-O", c.fmt}, c.opts...)
			testutil.QemuImg(t, append(args, base, img)...)

			f, err := format.OpenFile(img)
			if err != nil {
				t.Fatal(err)
			}
			if got := converter.Detect(f, f.Size()); string(got) != c.detect {
				t.Errorf("detected %q, want %q", got, c.detect)
			}
			f.Close()

			want, wantSize := testutil.ReferenceSHA256(t, img, c.fmt)
			res, sum := convertFile(t, img, converter.OpenOptions{})
			if res.VirtualSize != wantSize {
				t.Fatalf("virtual size %d, qemu-img %d", res.VirtualSize, wantSize)
			}
			if sum != want {
				t.Fatalf("sha256 %s, qemu-img %s", sum, want)
			}
		})
	}
}

func lookupType(name string) (converter.Format, bool) {
	for _, f := range converter.Formats {
		if string(f.Type) == name {
			return f, true
		}
	}
	return converter.Format{}, false
}

// TestConvertLargeSparse: a 6 GiB sparse disk with data just before and
// after the 2 GiB and 4 GiB marks and at the very end, in every sparse
// format (offsets past 32-bit limits are where readers break). The sparse
// output is checked patch by patch, and for data anywhere else: hashing
// 6 GiB of zeros three times per format made this the slowest test.
func TestConvertLargeSparse(t *testing.T) {
	if testing.Short() {
		t.Skip("large sparse images in -short mode")
	}
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	const size = 6<<30 + 64<<10 + 512
	f, err := os.Create(base)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	type patch struct {
		off  int64
		data []byte
	}
	var patches []patch
	for i, off := range []int64{0, 2<<30 - 4096, 2 << 30, 4<<30 - 1000, 4<<30 + 12345, size - 70000} {
		data := []byte(strings.Repeat("ferry-large-"+string(rune('A'+i)), 4000))
		testutil.WriteAt(t, base, off, data)
		patches = append(patches, patch{off, data})
	}
	// Patches overlap: what to expect is what the base file holds.
	bf, err := os.Open(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range patches {
		if _, err := bf.ReadAt(p.data, p.off); err != nil {
			t.Fatal(err)
		}
	}
	bf.Close()
	for _, c := range []struct{ fmt, opts string }{
		{"qcow2", ""},
		{"vmdk", "subformat=monolithicSparse"},
		{"vhdx", ""},
		{"vdi", ""},
		{"vpc", ""},
	} {
		t.Run(c.fmt, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "big."+c.fmt)
			args := []string{"convert", "-q", "-f", "raw", "-O", c.fmt}
			if c.opts != "" {
				args = append(args, "-o", c.opts)
			}
			testutil.QemuImg(t, append(args, base, img)...)
			f, err := format.OpenFile(img)
			if err != nil {
				t.Fatal(err)
			}
			im, err := converter.Open(f, converter.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			// VHD rounds the size up to its CHS geometry.
			if im.Size() < size || (c.fmt != "vpc" && im.Size() != size) {
				t.Fatalf("virtual size %d, want %d", im.Size(), int64(size))
			}
			out, err := os.Create(filepath.Join(t.TempDir(), "out.raw"))
			if err != nil {
				t.Fatal(err)
			}
			defer out.Close()
			if err := out.Truncate(im.Size()); err != nil {
				t.Fatal(err)
			}
			if _, err := converter.Convert(context.Background(), im, converter.Options{WriterAt: out, Workers: 3}); err != nil {
				t.Fatal(err)
			}
			for _, p := range patches {
				got := make([]byte, len(p.data))
				if _, err := out.ReadAt(got, p.off); err != nil || string(got) != string(p.data) {
					t.Fatalf("data at %d differs (%v)", p.off, err)
				}
			}
			// Any data outside the patches (rounded out to 64 KiB) is wrong.
			const slack = 64 << 10
			for off := int64(0); ; {
				d, err := syscall.Seek(int(out.Fd()), off, 3 /* SEEK_DATA */)
				if err != nil {
					break // ENXIO: no data after off
				}
				inPatch := false
				for _, p := range patches {
					if d >= p.off-slack && d < p.off+int64(len(p.data))+slack {
						inPatch, off = true, p.off+int64(len(p.data))+slack
						break
					}
				}
				if !inPatch {
					t.Fatalf("data at %d, away from every patch", d)
				}
			}
		})
	}
}

// TestDebianISOs converts real ISO images shipped by Debian packages.
func TestDebianISOs(t *testing.T) {
	isos := []string{"/usr/lib/ipxe/ipxe.iso", "/usr/lib/grub-rescue/grub-rescue-cdrom.iso"}
	for _, p := range isos {
		t.Run(filepath.Base(p), func(t *testing.T) {
			if _, err := os.Stat(p); err != nil {
				if os.Getenv("CI") == "true" {
					t.Fatalf("%s missing: make deps installs ipxe and grub-rescue-pc", p)
				}
				t.Skipf("%s missing: apt-get install ipxe grub-rescue-pc", p)
			}
			f, _ := format.OpenFile(p)
			img, err := converter.Open(f, converter.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			info := converter.Info(img)
			img.Close()
			if info.Format != "iso" || info.Label == "" {
				t.Fatalf("inspect: format %q label %q, want iso with a label", info.Format, info.Label)
			}
			want, _ := testutil.SHA256File(t, p)
			if _, sum := convertFile(t, p, converter.OpenOptions{}); sum != want {
				t.Fatalf("ISO converted to different bytes")
			}
		})
	}
}

// TestReferencesConfined: references are followed only inside the allowed
// directory, whatever the format.
func TestReferencesConfined(t *testing.T) {
	testutil.Need(t, "qemu-img")
	root := t.TempDir()
	inside := filepath.Join(root, "images")
	outside := filepath.Join(root, "secret")
	os.MkdirAll(inside, 0o755)
	os.MkdirAll(outside, 0o755)
	testutil.QemuImg(t, "create", "-q", "-f", "raw", filepath.Join(outside, "base.raw"), "1M")
	testutil.QemuImg(t, "create", "-q", "-f", "raw", filepath.Join(inside, "base.raw"), "1M")

	overlay := func(name, backing string) string {
		p := filepath.Join(inside, name)
		testutil.QemuImg(t, "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", p, "1M")
		return p
	}
	os.Symlink(filepath.Join(outside, "base.raw"), filepath.Join(inside, "link.raw"))
	cases := []struct {
		name, backing string
		o             converter.OpenOptions
		wantErr       error
	}{
		{"relative-inside", "base.raw", converter.OpenOptions{}, nil},
		{"absolute", filepath.Join(outside, "base.raw"), converter.OpenOptions{}, format.ErrUnsafeReference},
		{"dotdot", "../secret/base.raw", converter.OpenOptions{}, format.ErrUnsafeReference},
		{"symlink-out", "link.raw", converter.OpenOptions{}, format.ErrUnsafeReference},
		{"dotdot-allowed", "../secret/base.raw", converter.OpenOptions{AllowDir: root}, nil},
		{"no-references", "base.raw", converter.OpenOptions{NoReferences: true}, format.ErrUnsafeReference},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := overlay(c.name+".qcow2", c.backing)
			f, _ := format.OpenFile(p)
			img, err := converter.Open(f, c.o)
			if c.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				img.Close()
				return
			}
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("err = %v, want %v", err, c.wantErr)
			}
		})
	}
}
