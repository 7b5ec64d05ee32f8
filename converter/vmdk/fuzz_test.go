package vmdk

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/converter/format/formattest"
)

// TestMain caps the minimization of each new fuzz input at 5 s unless
// -fuzzminimizetime is given: Go's byte minimizer is quadratic, so with the
// 60 s default a multi-KiB image input takes the whole of a 60 s run.
func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.fuzzminimizetime" })
	if f := flag.Lookup("test.fuzzminimizetime"); f != nil && !set {
		f.Value.Set("5s")
	}
	os.Exit(m.Run())
}

// fuzzSeeds are small images of every layout: hand-built ones (tiny grains
// and descriptors keep them a few KiB: the fuzzer minimizes every new input,
// and big ones eat the fuzzing time) and, when qemu-img is installed, its
// own (64 KiB: qemu pads the metadata to a 64 KiB boundary).
func fuzzSeeds(f *testing.F) [][]byte { return fuzzSeedsT(f) }

func fuzzSeedsT(f testing.TB) [][]byte {
	data := make([]byte, 6<<10)
	for i := range data {
		if i/1024%3 != 1 {
			data[i] = byte(i * 31 / 7)
		}
	}
	const desc = "# Disk DescriptorFile\nCID=1\ncreateType=\"x\"\nRW 12 SPARSE \"x\"\n"
	small := func(o buildOpts) []byte {
		o.desc, o.descSectors, o.align = desc, 1, 1
		return buildSparse(f, data, o)
	}
	seeds := [][]byte{
		small(buildOpts{grainSectors: 2, gtes: 4}),
		small(buildOpts{grainSectors: 1, gtes: 4, omitEmptyGTs: true, zeroGrain: true, zeroGrains: []int64{1}}),
		small(buildOpts{stream: true, grainSectors: 2, gtes: 4}),
		small(buildOpts{stream: true, grainSectors: 2, gtes: 8, gdInHeader: true}),
		small(buildOpts{stream: true, grainSectors: 1, gtes: 16, omitEmptyGTs: true}),
		small(buildOpts{stream: true, noMarkers: true, grainSectors: 4, gtes: 4}),
		streamHeader(64, 8),
		[]byte("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 ZERO\nRW 16 FLAT \"a-flat.vmdk\" 0\n"),
		[]byte("# Disk DescriptorFile\ncreateType=\"twoGbMaxExtentFlat\"\nRW 4 ZERO\r\nRDONLY 5 ZERO\r\nRW 0 ZERO\r\n"),
		[]byte("COWD\x01\x00\x00\x00"),
	}
	if _, err := exec.LookPath("qemu-img"); err == nil {
		dir := f.TempDir()
		raw := filepath.Join(dir, "p.raw")
		if err := os.WriteFile(raw, data, 0o644); err != nil {
			f.Fatal(err)
		}
		for _, sub := range []string{"streamOptimized", "monolithicSparse"} {
			p := filepath.Join(dir, sub+".vmdk")
			if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat="+sub, raw, p).CombinedOutput(); err != nil {
				f.Fatalf("qemu-img: %v\n%s", err, out)
			}
			b, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			// qemu pads to 64 KiB before the first grain; trailing zeros
			// are dropped so inputs stay small.
			seeds = append(seeds, bytes.TrimRight(b, "\x00"))
		}
	}
	return seeds
}

// FuzzOpen: any input opens or fails cleanly, and an open image reads and
// maps completely without panic or hang.
func FuzzOpen(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		Probe(bytes.NewReader(b), int64(len(b)))
		img, err := Open(newMemFile("/fuzz/x.vmdk", b), formatOptionsNone)
		if err != nil {
			return
		}
		defer img.Close()
		formattest.Check(t, img, false)
	})
}

// FuzzReadStream: any stream ends cleanly with increasing, in-range emits.
func FuzzReadStream(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var capacity int64
		last := int64(-1)
		_ = ReadStream(bytes.NewReader(b), func(c int64) error {
			capacity = c
			return nil
		}, func(off int64, data []byte) error {
			if off <= last || off < 0 || off+int64(len(data)) > capacity || len(data) == 0 {
				t.Fatalf("emit(%d, %d bytes) after %d, capacity %d", off, len(data), last, capacity)
			}
			last = off
			return nil
		})
	})
}

// formatOptionsNone opens with no resolver: references are refused.
var formatOptionsNone = format.Options{}
