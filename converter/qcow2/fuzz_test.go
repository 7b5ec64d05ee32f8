package qcow2

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/converter/format/formattest"
)

// FuzzOpen: no input may panic or hang Open, ReadAt, Extent or Info.
func FuzzOpen(f *testing.F) {
	f.Add(minimalImage())
	f.Add(minimalExtL2Image())
	if _, err := exec.LookPath("qemu-img"); err == nil {
		dir := f.TempDir()
		raw := filepath.Join(dir, "a.raw")
		// Small seeds: the fuzzer minimizes new inputs byte by byte, and
		// extended L2 (16 KiB clusters at least) would make 100 KiB seeds.
		data := bytes.Repeat([]byte("ferry fuzz seed "), 256)
		data = append(append(data, make([]byte, 1024)...), data[:1000]...)
		if err := os.WriteFile(raw, data, 0o644); err == nil {
			seeds := [][]string{
				{"-o", "cluster_size=512"},
				{"-o", "cluster_size=512,compat=0.10"},
				{"-c", "-o", "cluster_size=512"},
				{"-c", "-o", "cluster_size=1024,compression_type=zstd"},
			}
			for i, s := range seeds {
				out := filepath.Join(dir, "seed.qcow2")
				args := append(append([]string{"convert", "-f", "raw", "-O", "qcow2"}, s...), raw, out)
				if exec.Command("qemu-img", args...).Run() != nil {
					continue
				}
				if i == 0 {
					exec.Command("qemu-io", "-f", "qcow2", "-c", "write -z 1k 2k", "-c", "discard 4k 1k", out).Run()
				}
				if b, err := os.ReadFile(out); err == nil {
					f.Add(b)
				}
				os.Remove(out)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := Open(&memFile{bytes.NewReader(data), "fuzz.qcow2"}, format.Options{})
		if err != nil {
			return
		}
		defer img.Close()
		formattest.Check(t, img, false)
	})
}
