package importer

import (
	"bytes"
	"context"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hikube/ferry/converter"
	"github.com/hikube/ferry/internal/testpeer/httpserver"
	"github.com/hikube/ferry/internal/testutil"
)

// End to end: the convert engine reads images straight from HTTP through
// a Source, with faults injected; the RAW result must be qemu-img's, the
// file's digest verified, and each byte fetched about once.
func TestConvertOverHTTP(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	testutil.Pattern(t, raw, 48<<20, 5)
	type fixture struct {
		name, fmt string
		make      func(out string)
	}
	conv := func(args ...string) func(string) {
		return func(out string) {
			testutil.QemuImg(t, append(append([]string{"convert"}, args...), raw, out)...)
		}
	}
	fixtures := []fixture{
		{"disk.qcow2", "qcow2", conv("-O", "qcow2")},
		{"disk-c.qcow2", "qcow2", conv("-O", "qcow2", "-c")},
		{"disk.vmdk", "vmdk", conv("-O", "vmdk")},
		{"disk-so.vmdk", "vmdk", conv("-O", "vmdk", "-o", "subformat=streamOptimized")},
		{"disk-vmware.vmdk", "vmdk", func(out string) { buildStreamOptimized(t, raw, out) }},
		{"disk.vhd", "vpc", conv("-O", "vpc")},
		{"disk.vhdx", "vhdx", conv("-O", "vhdx")},
		{"disk.vdi", "vdi", conv("-O", "vdi")},
	}
	for _, f := range fixtures {
		f.make(filepath.Join(dir, f.name))
	}
	os.Remove(raw)
	srv := httpserver.Start(t, dir)
	faults := []struct {
		name   string
		faults []httpserver.Fault
		cache  int64
	}{
		{"clean", nil, 0},
		{"drops and 503s", []httpserver.Fault{
			{After: 2, Times: 2, Drop: true, DropAfter: 200000},
			{After: 5, Times: 2, Status: 503, RetryAfter: "1"},
		}, 0},
		// The least cache allowed: side reads, evictions, re-fetches.
		{"tiny cache", nil, 6 << 19},
	}
	for _, f := range fixtures {
		p := filepath.Join(dir, f.name)
		want, _ := testutil.ReferenceSHA256(t, p, f.fmt)
		fileSHA, size := testutil.SHA256File(t, p)
		for _, fl := range faults {
			t.Run(f.name+"/"+fl.name, func(t *testing.T) {
				srv.ClearFaults()
				srv.ResetStats()
				for _, x := range fl.faults {
					srv.Fault("/"+f.name, x)
				}
				o := testOptions()
				o.Checksum = "sha256:" + fileSHA
				if fl.cache != 0 {
					o.CacheSize = fl.cache
				}
				s, err := Open(context.Background(), srv.URL+"/"+f.name, o)
				if err != nil {
					t.Fatal(err)
				}
				img, err := converter.Open(s, converter.OpenOptions{NoReferences: true})
				if err != nil {
					s.Close()
					t.Fatal(err)
				}
				defer img.Close()
				res, err := converter.Convert(context.Background(), img, converter.Options{Digest: true})
				if err != nil {
					t.Fatal(err)
				}
				if res.RawSHA256 != want {
					t.Fatalf("raw sha256 %s, qemu-img says %s", res.RawSHA256, want)
				}
				d, err := s.Complete(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if d.SHA256 != fileSHA || d.Checksum != o.Checksum {
					t.Fatalf("%+v", d)
				}
				logEngine(t, s)
				t.Logf("%s: %d bytes, served %.4f×, %d requests, %d retries", res.Format, size, float64(srv.BytesServed())/float64(size), d.Requests, d.Retries)
				if fl.faults == nil && fl.cache == 0 {
					checkOnce(t, srv.BytesServed(), size, o.BlockSize)
				}
			})
		}
	}
}

// A streamOptimized VMDK made by qemu keeps its grain tables together near
// the start; the reader loads them a batch (1 GiB of disk) at a time as the
// conversion goes, long after the window has left the start of the file.
// Those reads must fetch the few table bytes again, not the whole block:
// once cost a block plus a read-ahead block it evicted, 4-6 % of the file.
func TestGrainTablesBehindTheWindow(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir, work := t.TempDir(), t.TempDir()
	raw := filepath.Join(work, "disk.raw")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	// 4.25 GiB, 256 KiB of random data every 24 MiB: five table batches,
	// a file of about 46 MiB.
	const size, every, patch = 4352 << 20, 24 << 20, 256 << 10
	rng := rand.New(rand.NewSource(3))
	var patches [][]byte
	for off := int64(0); off < size; off += every {
		b := make([]byte, patch)
		rng.Read(b)
		patches = append(patches, b)
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	img := filepath.Join(dir, "disk.vmdk")
	testutil.QemuImg(t, "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, img)
	os.Remove(raw)
	fileSHA, fsize := testutil.SHA256File(t, img)
	srv := httpserver.Start(t, dir)
	o := testOptions()
	o.CacheSize = 8 << 20
	o.Checksum = "sha256:" + fileSHA
	s := mustOpen(t, srv.URL+"/disk.vmdk", o)
	im, err := converter.Open(s, converter.OpenOptions{NoReferences: true})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	// A sparse output, checked patch by patch: hashing 4 GiB of zeros
	// would make this test slow, not stronger.
	out, err := os.Create(filepath.Join(work, "out.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := out.Truncate(im.Size()); err != nil {
		t.Fatal(err)
	}
	// A slow disk: the conversion lags the fetch as a CPU-bound one does
	// (the benchmark's), so the start of the file leaves the cache before
	// the reader needs the later tables.
	if _, err := converter.Convert(context.Background(), im, converter.Options{WriterAt: slowWriter{out}}); err != nil {
		t.Fatal(err)
	}
	mustComplete(t, s)
	got := make([]byte, patch)
	for i, want := range patches {
		if _, err := out.ReadAt(got, int64(i)*every); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("patch %d at %d differs (%v)", i, int64(i)*every, err)
		}
	}
	for off := int64(0); ; {
		d, err := syscall.Seek(int(out.Fd()), off, 3 /* SEEK_DATA */)
		if err != nil {
			break // ENXIO: no data past off
		}
		if d%every >= patch {
			t.Fatalf("data at %d, outside every patch", d)
		}
		off = (d/every + 1) * every
	}
	logEngine(t, s)
	t.Logf("file %d bytes, served %.4f×, %d requests", fsize, float64(srv.BytesServed())/float64(fsize), srv.Requests())
	// Before the fix: two blocks fetched twice, 1.026×.
	checkOnce(t, srv.BytesServed(), fsize, o.BlockSize)
}

type slowWriter struct{ io.WriterAt }

func (w slowWriter) WriteAt(p []byte, off int64) (int, error) {
	time.Sleep(40 * time.Millisecond)
	return w.WriterAt.WriteAt(p, off)
}
