package pipeline

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hikube/ferry/converter"
	"github.com/hikube/ferry/importer"
	"github.com/hikube/ferry/internal/testpeer/httpserver"
	"github.com/hikube/ferry/internal/testutil"
)

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	s, _ := testutil.SHA256File(t, p)
	return s
}

// convertInput runs an opened input to a stream and returns the RAW's
// digest, then verifies the source.
func convertInput(t *testing.T, in *Input) (string, importer.Digests) {
	t.Helper()
	h := sha256.New()
	if _, err := in.Convert(context.Background(), converter.Options{Stream: h}); err != nil {
		t.Fatal(err)
	}
	d, err := in.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil)), d
}

// An OVA over HTTP: the disk --disk names is read in place (no spool),
// the whole archive hashed and verified.
func TestOpenInputOVA(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "vm.ovf"), []byte("<Envelope/>"), 0o644)
	for i, n := range []string{"vm-disk1.vmdk", "vm-disk2.vmdk"} {
		raw := filepath.Join(dir, "raw"+n)
		testutil.Pattern(t, raw, int64(3<<20+i*4096), int64(i+1))
		testutil.QemuImg(t, "convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, filepath.Join(src, n))
	}
	want, _ := testutil.ReferenceSHA256(t, filepath.Join(src, "vm-disk2.vmdk"), "vmdk")
	ova := filepath.Join(dir, "vm.ova")
	testutil.Run(t, "tar", "-cf", ova, "-C", src, "vm.ovf", "vm-disk1.vmdk", "vm-disk2.vmdk")
	srv := httpserver.Start(t, dir)
	o := InputOptions{Fetch: importer.Options{Checksum: "sha256:" + fileSHA(t, ova)}}

	if _, err := OpenInput(context.Background(), srv.URL+"/vm.ova", o); err == nil || !bytes.Contains([]byte(err.Error()), []byte("--disk")) {
		t.Fatalf("no disk chosen: %v", err)
	}
	o.Fetch.Disk = "vm-disk2.vmdk"
	in, err := OpenInput(context.Background(), srv.URL+"/vm.ova", o)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if in.Member != "vm-disk2.vmdk" || len(in.Disks) != 2 || in.Streamed() || in.Type != "vmdk" {
		t.Fatalf("member %q disks %v streamed %v type %s", in.Member, in.Disks, in.Streamed(), in.Type)
	}
	got, d := convertInput(t, in)
	if got != want || d.SHA256 != fileSHA(t, ova) {
		t.Fatalf("raw %s want %s; source %+v", got, want, d)
	}
}

// Wrapped images: raw streams end to end without scratch space; a qcow2
// inside a wrapper needs --scratch, from HTTP as from stdin.
func TestOpenInputWrapped(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	testutil.Pattern(t, raw, 5<<20+512, 9)
	testutil.QemuImg(t, "convert", "-q", "-f", "raw", "-O", "qcow2", raw, filepath.Join(dir, "disk.qcow2"))
	wantRaw, _ := testutil.SHA256File(t, raw)
	for _, tool := range []struct{ name, ext string }{{"gzip", "gz"}, {"xz", "xz"}, {"zstd", "zst"}, {"bzip2", "bz2"}} {
		for _, base := range []string{"disk.raw", "disk.qcow2"} {
			testutil.Run(t, "sh", "-c", tool.name+" -c "+filepath.Join(dir, base)+" > "+filepath.Join(dir, base+"."+tool.ext))
		}
	}
	srv := httpserver.Start(t, dir)
	for _, ext := range []string{"gz", "xz", "zst", "bz2"} {
		t.Run(ext, func(t *testing.T) {
			p := filepath.Join(dir, "disk.raw."+ext)
			o := InputOptions{Fetch: importer.Options{Checksum: "sha256:" + fileSHA(t, p)}}
			in, err := OpenInput(context.Background(), srv.URL+"/disk.raw."+ext, o)
			if err != nil {
				t.Fatal(err)
			}
			if !in.Streamed() || in.Wrapper == importer.None {
				t.Fatalf("raw in %s: streamed %v wrapper %q", ext, in.Streamed(), in.Wrapper)
			}
			got, d := convertInput(t, in)
			in.Close()
			if got != wantRaw || d.Checksum != o.Fetch.Checksum {
				t.Fatalf("raw %s want %s, %+v", got, wantRaw, d)
			}

			q := filepath.Join(dir, "disk.qcow2."+ext)
			o = InputOptions{Fetch: importer.Options{Checksum: "sha256:" + fileSHA(t, q)}}
			if _, err := OpenInput(context.Background(), srv.URL+"/disk.qcow2."+ext, o); !errors.Is(err, converter.ErrNeedsRandomAccess) {
				t.Fatalf("qcow2 without scratch: %v", err)
			}
			o.Fetch.Scratch = t.TempDir()
			in, err = OpenInput(context.Background(), srv.URL+"/disk.qcow2."+ext, o)
			if err != nil {
				t.Fatal(err)
			}
			got, d = convertInput(t, in)
			in.Close()
			if got != wantRaw || d.SHA256 != fileSHA(t, q) {
				t.Fatalf("spooled qcow2: raw %s want %s, %+v", got, wantRaw, d)
			}
			if entries, _ := os.ReadDir(o.Fetch.Scratch); len(entries) != 0 {
				t.Fatalf("spool left %v", entries)
			}

			// stdin, same: the wrapped qcow2 needs the spool.
			withStdin(t, q, func() {
				if _, err := OpenInput(context.Background(), "-", InputOptions{}); !errors.Is(err, converter.ErrNeedsRandomAccess) {
					t.Fatalf("stdin qcow2 without scratch: %v", err)
				}
			})
			withStdin(t, q, func() {
				in, err := OpenInput(context.Background(), "-", o)
				if err != nil {
					t.Fatal(err)
				}
				defer in.Close()
				if got, d := convertInput(t, in); got != wantRaw || d.SHA256 != fileSHA(t, q) {
					t.Fatalf("stdin: raw %s, %+v", got, d)
				}
			})
		})
	}
	t.Run("plain passes through", func(t *testing.T) {
		in, err := OpenInput(context.Background(), srv.URL+"/disk.qcow2", InputOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		if in.Streamed() || in.Wrapper != importer.None || in.Type != "qcow2" {
			t.Fatalf("streamed %v wrapper %q type %s", in.Streamed(), in.Wrapper, in.Type)
		}
	})
}

// withStdin runs f with os.Stdin reading file p.
func withStdin(t *testing.T, p string, f func()) {
	t.Helper()
	fh, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	old := os.Stdin
	os.Stdin = fh
	defer func() { os.Stdin = old }()
	f()
}

// An OVA's manifest (.mf) is checked for the disk converted, from HTTP and
// from a local file, wherever the manifest lies in the archive; a wrong
// digest fails Verify with a ChecksumError (exit 4 in the CLI).
func TestOpenInputOVAManifest(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "vm.ovf"), []byte("<Envelope/>"), 0o644)
	raw := filepath.Join(dir, "disk.raw")
	testutil.Pattern(t, raw, 9<<20, 4)
	disk := filepath.Join(src, "vm-disk1.vmdk")
	testutil.QemuImg(t, "convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, disk)
	want, _ := testutil.SHA256File(t, raw)
	b, _ := os.ReadFile(disk)
	s1, s256 := sha1.Sum(b), sha256.Sum256(b)
	good1, good256 := hex.EncodeToString(s1[:]), hex.EncodeToString(s256[:])
	srv := httpserver.Start(t, dir)
	for _, c := range []struct {
		name, mf string
		last     bool   // manifest after the disk
		verified string // ManifestChecksum, "" for none
		bad      bool
	}{
		{"sha256 first", "SHA256(vm.ovf)= " + good256 + "\nSHA256(vm-disk1.vmdk)= " + good256 + "\n", false, "sha256:" + good256, false},
		{"sha1 last", "SHA1 (vm-disk1.vmdk)= " + good1 + "\r\n", true, "sha1:" + good1, false},
		{"disk not listed", "SHA256(vm.ovf)= " + good256 + "\n", false, "", false},
		{"wrong digest", "SHA256(vm-disk1.vmdk)= " + strings.Repeat("0", 64) + "\n", true, "", true},
	} {
		os.WriteFile(filepath.Join(src, "vm.mf"), []byte(c.mf), 0o644)
		members := []string{"vm.ovf", "vm.mf", "vm-disk1.vmdk"}
		if c.last {
			members = []string{"vm.ovf", "vm-disk1.vmdk", "vm.mf"}
		}
		ova := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".ova")
		testutil.Run(t, "tar", append([]string{"-cf", ova, "-C", src}, members...)...)
		for _, where := range []string{srv.URL + "/" + filepath.Base(ova), ova} {
			t.Run(c.name+"/"+map[bool]string{true: "http", false: "local"}[strings.HasPrefix(where, "http")], func(t *testing.T) {
				o := InputOptions{Fetch: importer.Options{CacheSize: 6 << 20, BlockSize: 1 << 20}}
				in, err := OpenInput(context.Background(), where, o)
				if err != nil {
					t.Fatal(err)
				}
				defer in.Close()
				if in.Manifest != "vm.mf" {
					t.Fatalf("manifest %q", in.Manifest)
				}
				h := sha256.New()
				if _, err := in.Convert(context.Background(), converter.Options{Stream: h}); err != nil {
					t.Fatal(err)
				}
				if got := hex.EncodeToString(h.Sum(nil)); got != want {
					t.Fatalf("raw %s, want %s", got, want)
				}
				_, err = in.Verify(context.Background())
				var ce *importer.ChecksumError
				if c.bad {
					if !errors.As(err, &ce) || ce.Actual != good256 || !strings.Contains(err.Error(), "vm-disk1.vmdk (per the archive's manifest vm.mf)") {
						t.Fatalf("want a checksum error naming the manifest: %v", err)
					}
					return
				}
				if err != nil || in.ManifestChecksum != c.verified {
					t.Fatalf("verify: %v; manifest checksum %q, want %q", err, in.ManifestChecksum, c.verified)
				}
			})
		}
	}
}
