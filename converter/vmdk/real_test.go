package vmdk

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hikube/ferry/internal/testutil"
)

// Real VMDKs made by other tools, from Debian's ganeti-testsuite package:
// two monolithicSparse disks, a gzipped one, and an OVA holding a
// streamOptimized disk (VirtualBox layout: grain directory in the header).
// They are fetched into a cache directory when apt-get can get them; the
// qemu-img fixtures elsewhere are the required tests, these are extras.

var ganetiFiles = []string{"new_disk.vmdk", "second_disk.vmdk", "compr_disk.vmdk.gz", "ova.ova"}

func ganetiData(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("real images are fetched with apt-get; skipped in -short")
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	cache := filepath.Join(base, "ferry-testdata", "ganeti-testsuite-ovfdata")
	have := func() bool {
		for _, f := range ganetiFiles {
			if _, err := os.Stat(filepath.Join(cache, f)); err != nil {
				return false
			}
		}
		return true
	}
	if have() {
		return cache
	}
	for _, tool := range []string{"apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("real images need %s to fetch ganeti-testsuite", tool)
		}
	}
	tmp := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "apt-get", "download", "ganeti-testsuite")
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("cannot download ganeti-testsuite (no network or apt source?): %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "ganeti-testsuite_*.deb"))
	if len(debs) != 1 {
		t.Skipf("apt-get download left %d packages", len(debs))
	}
	x := filepath.Join(tmp, "x")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], x).CombinedOutput(); err != nil {
		t.Skipf("dpkg-deb -x: %v\n%s", err, out)
	}
	src := filepath.Join(x, "usr/share/ganeti/testsuite/test/data/ovfdata")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Skipf("cache directory: %v", err)
	}
	for _, f := range ganetiFiles {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Skipf("ganeti-testsuite layout changed: %v", err)
		}
		if err := os.WriteFile(filepath.Join(cache, f), b, 0o644); err != nil {
			t.Skipf("cache: %v", err)
		}
	}
	return cache
}

func TestRealImages(t *testing.T) {
	testutil.Need(t, "qemu-img")
	cache := ganetiData(t)
	dir := t.TempDir()
	copyTo := func(name string, r io.Reader) string {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := io.Copy(f, r); err != nil {
			t.Fatal(err)
		}
		return p
	}
	open := func(name string) *os.File {
		f, err := os.Open(filepath.Join(cache, name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	for _, name := range []string{"new_disk.vmdk", "second_disk.vmdk"} {
		t.Run(name, func(t *testing.T) {
			img := compareWithQemu(t, copyTo(name, open(name)))
			if img.Info().Subformat != "monolithicSparse" {
				t.Errorf("subformat %q", img.Info().Subformat)
			}
		})
	}
	t.Run("compr_disk.vmdk.gz", func(t *testing.T) {
		zr, err := gzip.NewReader(open("compr_disk.vmdk.gz"))
		if err != nil {
			t.Fatal(err)
		}
		compareWithQemu(t, copyTo("compr_disk.vmdk", zr))
	})
	// This OVA is gzipped (some tools do that); the tar is inside.
	ova := func() io.Reader {
		zr, err := gzip.NewReader(open("ova.ova"))
		if err != nil {
			t.Fatal(err)
		}
		return zr
	}
	t.Run("ova", func(t *testing.T) {
		// Random access on the extracted disk, and a pure stream read
		// straight out of the tar.
		tr := tar.NewReader(ova())
		var disk string
		for {
			h, err := tr.Next()
			if err != nil {
				t.Fatalf("no disk in the OVA: %v", err)
			}
			if filepath.Ext(h.Name) == ".vmdk" {
				disk = copyTo("ova-disk.vmdk", tr)
				break
			}
		}
		img := compareWithQemu(t, disk)
		if img.Info().Subformat != "streamOptimized" || img.Size() != 8<<30 {
			t.Errorf("subformat %q size %d", img.Info().Subformat, img.Size())
		}

		tr = tar.NewReader(ova())
		for {
			h, err := tr.Next()
			if err != nil {
				t.Fatal(err)
			}
			if filepath.Ext(h.Name) != ".vmdk" {
				continue
			}
			var capacity int64
			grains := 0
			err = ReadStream(tr, func(c int64) error { capacity = c; return nil }, func(int64, []byte) error { grains++; return nil })
			if err != nil || capacity != 8<<30 {
				t.Fatalf("ReadStream: capacity %d, %v", capacity, err)
			}
			if grains != 0 {
				t.Fatalf("%d grains in an empty disk", grains)
			}
			break
		}
	})
}
