package converter_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hikube/ferry/converter"
)

// memFile is an in-memory format.File.
type memFile struct {
	*bytes.Reader
	size int64
}

func (m memFile) Name() string { return "/fuzz/input" }
func (m memFile) Size() int64  { return m.size }
func (m memFile) Close() error { return nil }

// fuzzSeeds makes small images of every format with qemu-img, when it is
// there (the fuzzer also runs from the committed corpus alone).
func fuzzSeeds(f *testing.F) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return
	}
	dir := f.TempDir()
	base := filepath.Join(dir, "base.raw")
	data := bytes.Repeat([]byte("ferry fuzz seed "), 4096)
	os.WriteFile(base, data, 0o644)
	for _, c := range [][]string{
		{"qcow2"}, {"qcow2", "-c"}, {"vmdk", "-o", "subformat=streamOptimized"}, {"vmdk"},
		{"vpc"}, {"vdi"},
	} {
		out := filepath.Join(dir, "seed")
		args := append([]string{"convert", "-q", "-f", "raw", "-O"}, c...)
		if exec.Command("qemu-img", append(args, base, out)...).Run() == nil {
			if b, err := os.ReadFile(out); err == nil && len(b) < 1<<20 {
				f.Add(b)
			}
		}
		os.Remove(out)
	}
}

// FuzzOpenConvert: whatever the bytes, detection, opening and converting
// end in a result or an error, never a panic or a hang.
func FuzzOpenConvert(f *testing.F) {
	fuzzSeeds(f)
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03"))
	f.Add([]byte("KDMV\x01\x00\x00\x00"))
	f.Add([]byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 100 FLAT \"x\" 0\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := converter.Open(memFile{bytes.NewReader(data), int64(len(data))}, converter.OpenOptions{NoReferences: true})
		if err != nil {
			return
		}
		defer img.Close()
		converter.Info(img)
		if img.Size() > 16<<20 {
			return
		}
		converter.Convert(context.Background(), img, converter.Options{Workers: 2, Stream: io.Discard, Digest: true})
	})
}

// FuzzConvertStream: the one-pass path for stdin and compressed wrappers.
func FuzzConvertStream(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReader(bytes.NewReader(data))
		typ, err := converter.DetectStream(br)
		if err != nil {
			return
		}
		converter.ConvertStream(context.Background(), br, typ, converter.Options{Stream: &limitWriter{16 << 20}})
	})
}

// limitWriter fails once a hostile stream claims too much output.
type limitWriter struct{ left int64 }

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		return 0, io.ErrShortWrite
	}
	l.left -= int64(len(p))
	return len(p), nil
}
