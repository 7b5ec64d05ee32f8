package converter_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/hikube/ferry/converter"
	"github.com/hikube/ferry/internal/testutil"
)

type sizedWriter struct {
	f    *os.File
	size int64
}

func (w *sizedWriter) WriteAt(p []byte, off int64) (int, error) { return w.f.WriteAt(p, off) }
func (w *sizedWriter) SetSize(n int64) error                    { w.size = n; return w.f.Truncate(n) }

func TestConvertStream(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	testutil.Pattern(t, base, 9<<20+512, 11)
	cases := []struct {
		name, fmt string
		args      []string
		wantErr   error
	}{
		{"raw", "raw", nil, nil},
		{"vmdk-stream", "vmdk", []string{"-o", "subformat=streamOptimized"}, nil},
		{"qcow2", "qcow2", nil, converter.ErrNeedsRandomAccess},
		{"vhdx", "vhdx", nil, converter.ErrNeedsRandomAccess},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "img")
			testutil.QemuImg(t, append(append([]string{"convert", "-q", "-f", "raw", "-O", c.fmt}, c.args...), base, img)...)
			want, wantSize := testutil.ReferenceSHA256(t, img, c.fmt)
			data, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			// Two targets at once: an in-order stream and a sparse file.
			br := bufio.NewReaderSize(bytes.NewReader(data), 1<<20)
			typ, err := converter.DetectStream(br)
			if err != nil {
				t.Fatal(err)
			}
			if string(typ) != c.fmt {
				t.Fatalf("detected %s, want %s", typ, c.fmt)
			}
			out, _ := os.Create(filepath.Join(t.TempDir(), "out.raw"))
			defer out.Close()
			sw := &sizedWriter{f: out}
			var stream bytes.Buffer
			res, err := converter.ConvertStream(context.Background(), br, typ, converter.Options{WriterAt: sw, Stream: &stream, Digest: true})
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("err = %v, want %v", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(stream.Bytes())
			if hex.EncodeToString(sum[:]) != want || res.RawSHA256 != want || res.VirtualSize != wantSize || sw.size != wantSize {
				t.Fatalf("stream sha %x, digest %s, size %d/%d; want %s %d", sum, res.RawSHA256, res.VirtualSize, sw.size, want, wantSize)
			}
			if got, _ := testutil.SHA256File(t, out.Name()); got != want {
				t.Fatal("sparse file target differs")
			}
		})
	}
}
