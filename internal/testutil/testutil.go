// Package testutil helps tests make fixtures with the reference tools
// (qemu-img, qemu-io) and check images against them. A needed tool that is
// missing fails the test under CI=true and skips it otherwise, with the
// install hint; `make test` installs them.
package testutil

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/lima-vm/go-qcow2reader/image"
)

// Need returns the path of tool, failing (CI=true) or skipping the test when
// it is missing.
func Need(t testing.TB, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err == nil {
		return p
	}
	msg := fmt.Sprintf("%s not found in PATH: run `make test` (installs qemu-utils, xz-utils, zstd) or apt-get install it", tool)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// Run runs a command and fails the test with its output on error.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	Need(t, name)
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// QemuImg runs qemu-img with args.
func QemuImg(t testing.TB, args ...string) string {
	t.Helper()
	return Run(t, "qemu-img", args...)
}

// QemuIO runs `qemu-io -f fmt file -c cmd...`.
func QemuIO(t testing.TB, file, fmt string, cmds ...string) {
	t.Helper()
	args := []string{"-f", fmt}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, file)
	Run(t, "qemu-io", args...)
}

// ReferenceSHA256 converts file (of format fmt; "" lets qemu-img probe) to
// raw with qemu-img and returns the SHA-256 of the result and its size.
func ReferenceSHA256(t testing.TB, file, fmt string) (string, int64) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ref.raw")
	args := []string{"convert"}
	if fmt != "" {
		args = append(args, "-f", fmt)
	}
	args = append(args, "-O", "raw", file, out)
	QemuImg(t, args...)
	sum, size := SHA256File(t, out)
	os.Remove(out)
	return sum, size
}

// SHA256File returns the hex SHA-256 and size of a file.
func SHA256File(t testing.TB, path string) (string, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil)), n
}

// Pattern writes deterministic content into a raw file of size bytes:
// regions of random data, compressible text and zero gaps, so every format
// gets allocated, compressible and sparse clusters. Sparse regions are
// left as holes.
func Pattern(t testing.TB, path string, size int64, seed int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(seed))
	buf := make([]byte, 256<<10)
	for off := int64(0); off < size; {
		n := int64(4096 * (1 + rng.Intn(64)))
		if off+n > size {
			n = size - off
		}
		switch rng.Intn(4) {
		case 0: // zero gap, left as a hole
		case 1: // random, incompressible
			b := buf[:n]
			rng.Read(b)
			if _, err := f.WriteAt(b, off); err != nil {
				t.Fatal(err)
			}
		default: // compressible
			b := buf[:n]
			line := []byte(fmt.Sprintf("ferry test data block %d at %d\n", rng.Intn(1000), off))
			for i := range b {
				b[i] = line[i%len(line)]
			}
			if _, err := f.WriteAt(b, off); err != nil {
				t.Fatal(err)
			}
		}
		off += n
	}
}

// WriteAt writes data at off in file (creating it).
func WriteAt(t testing.TB, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
}

// ImageSHA256 reads img through ReadAt (odd-sized, unaligned reads) and
// checks that its Extent map is consistent: extents tile [0, Size) without
// gaps and Zero extents read as zeros. It returns the hex SHA-256 of the
// virtual disk.
func ImageSHA256(t testing.TB, img image.Image) string {
	t.Helper()
	size := img.Size()
	if size < 0 {
		t.Fatalf("image size unknown")
	}
	h := sha256.New()
	buf := make([]byte, 1<<20+4096+17) // odd size: crosses cluster boundaries
	for off := int64(0); off < size; {
		n := int64(len(buf))
		if off+n > size {
			n = size - off
		}
		m, err := img.ReadAt(buf[:n], off)
		if int64(m) != n {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v", n, off, m, err)
		}
		if err != nil && err != io.EOF {
			t.Fatalf("ReadAt(%d bytes at %d): %v", n, off, err)
		}
		h.Write(buf[:n])
		off += n
	}
	// Extent map.
	zero := make([]byte, 64<<10)
	for off := int64(0); off < size; {
		e, err := img.Extent(off, size-off)
		if err != nil {
			t.Fatalf("Extent(%d, %d): %v", off, size-off, err)
		}
		if e.Start != off || e.Length <= 0 || e.Start+e.Length > size {
			t.Fatalf("Extent(%d, %d) = %+v: does not start at the offset or is out of range", off, size-off, e)
		}
		if e.Zero {
			// Check the first MiB of each zero extent: enough to catch a
			// wrong map without reading terabytes of holes.
			end := min(e.Start+e.Length, e.Start+1<<20)
			for p := e.Start; p < end; p += int64(len(zero)) {
				n := int64(len(zero))
				if p+n > end {
					n = end - p
				}
				b := make([]byte, n)
				if _, err := img.ReadAt(b, p); err != nil && err != io.EOF {
					t.Fatalf("ReadAt zero extent at %d: %v", p, err)
				}
				if !bytes.Equal(b, zero[:n]) {
					t.Fatalf("extent %+v is Zero but reads non-zero data at %d", e, p)
				}
			}
		}
		off += e.Length
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Truncate shortens a copy of src to n bytes and returns its path.
func Truncated(t testing.TB, src string, n int64) string {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if n > int64(len(data)) {
		n = int64(len(data))
	}
	p := filepath.Join(t.TempDir(), "truncated-"+filepath.Base(src))
	if err := os.WriteFile(p, data[:n], 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// SmallFS mounts a tmpfs of size bytes on a new temporary directory, for
// tests of a full disk, and unmounts it when the test ends. Mounting needs
// root (CI runs as root); elsewhere the test is skipped, and in CI it
// fails rather than skip.
func SmallFS(t testing.TB, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		msg := fmt.Sprintf("mount a %d-byte tmpfs for a full-disk test: %v (needs root)", size, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}
