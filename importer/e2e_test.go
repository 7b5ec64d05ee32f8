package importer

import (
	"context"
	"os"
	"path/filepath"
	"testing"

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
