package importer

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hikube/ferry/internal/testpeer/httpserver"
	"github.com/hikube/ferry/internal/testutil"
)

// withStdin runs f with os.Stdin reading the file at p.
func withStdin(t *testing.T, p string, f func()) {
	t.Helper()
	in, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	old := os.Stdin
	os.Stdin = in
	defer func() { os.Stdin = old }()
	f()
}

// wrapped makes raw data and its compressed forms with the real tools.
func wrapped(t *testing.T, dir string) (raw []byte, files map[Wrapper]string) {
	t.Helper()
	p := filepath.Join(dir, "disk.raw")
	testutil.Pattern(t, p, 6<<20, 3)
	raw, _ = os.ReadFile(p)
	testutil.Run(t, "gzip", "-k", "-1", p)
	testutil.Run(t, "xz", "-k", "-0", "-T2", p)
	testutil.Run(t, "zstd", "-q", "-k", p, "-o", p+".zst")
	testutil.Run(t, "bzip2", "-k", "-1", p)
	return raw, map[Wrapper]string{Gzip: p + ".gz", XZ: p + ".xz", Zstd: p + ".zst", Bzip2: p + ".bz2"}
}

func TestSniffWrapper(t *testing.T) {
	dir := t.TempDir()
	raw, files := wrapped(t, dir)
	if w := SniffWrapper(raw[:SniffLen]); w != None {
		t.Fatalf("raw sniffed as %q", w)
	}
	for w, p := range files {
		b, _ := os.ReadFile(p)
		if got := SniffWrapper(b[:SniffLen]); got != w {
			t.Errorf("%s sniffed as %q", p, got)
		}
	}
	for _, head := range [][]byte{nil, {0x1f}, {0x1f, 0x8b, 7}, []byte("BZh9"), []byte("BZh0\x31\x41\x59\x26\x53\x59"), []byte("QFI\xfb"), []byte("KDMV")} {
		if w := SniffWrapper(head); w != None {
			t.Errorf("%q sniffed as %q", head, w)
		}
	}
}

// stdin through each wrapper, hashed and verified at EOF.
func TestStreamWrappers(t *testing.T) {
	dir := t.TempDir()
	raw, files := wrapped(t, dir)
	for w, p := range files {
		t.Run(string(w), func(t *testing.T) {
			compressed, _ := os.ReadFile(p)
			o := testOptions()
			o.Checksum = "sha256:" + sha256Hex(compressed)
			withStdin(t, p, func() {
				st, err := OpenStream(context.Background(), "-", o)
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				pr := bufio.NewReader(st)
				head, _ := pr.Peek(SniffLen)
				if got := SniffWrapper(head); got != w {
					t.Fatalf("sniffed %q", got)
				}
				zr, err := Decompress(pr, w)
				if err != nil {
					t.Fatal(err)
				}
				defer zr.Close()
				equalBytes(t, readAll(t, zr), raw)
				d, err := st.Complete(context.Background())
				if err != nil || d.SHA256 != sha256Hex(compressed) || d.Checksum != o.Checksum || d.BytesFetched != int64(len(compressed)) {
					t.Fatalf("%+v %v", d, err)
				}
			})
		})
	}
	t.Run("concatenated gzip", func(t *testing.T) {
		gz, _ := os.ReadFile(files[Gzip])
		cat := filepath.Join(dir, "cat.gz")
		os.WriteFile(cat, append(append([]byte(nil), gz...), gz...), 0o644)
		st, err := OpenStream(context.Background(), cat, testOptions())
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		zr, _ := Decompress(st, Gzip)
		equalBytes(t, readAll(t, zr), append(append([]byte(nil), raw...), raw...))
	})
	t.Run("corrupt xz", func(t *testing.T) {
		b, _ := os.ReadFile(files[XZ])
		b[len(b)/2] ^= 0xff
		zr, err := Decompress(bytes.NewReader(b), XZ)
		if err == nil {
			_, err = io.ReadAll(zr)
		}
		if err == nil {
			t.Fatal("corrupt xz decompressed")
		}
	})
}

// At the end of the data, Read returns the verdict: a *ChecksumError, not
// io.EOF, so nothing takes a bad stream as complete.
func TestStreamChecksumAtEOF(t *testing.T) {
	dir := t.TempDir()
	p, data := randomFile(t, dir, "x.img", 300000, 1)
	o := testOptions()
	o.Checksum = "sha1:" + strings.Repeat("0", 40)
	withStdin(t, p, func() {
		st, err := OpenStream(context.Background(), "-", o)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(st)
		var ce *ChecksumError
		if !errors.As(err, &ce) || ce.Source != "stdin" || len(got) != len(data) {
			t.Fatalf("ReadAll: %d bytes, %v", len(got), err)
		}
		if _, err := st.Read(make([]byte, 10)); !errors.As(err, &ce) {
			t.Fatalf("verdict not sticky: %v", err)
		}
	})
	// Remote, through the block engine.
	srv := httpserver.Start(t, dir)
	st, err := OpenStream(context.Background(), srv.URL+"/x.img", o)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = io.ReadAll(st)
	var ce *ChecksumError
	if !errors.As(err, &ce) {
		t.Fatalf("remote: %v", err)
	}
	// No Range support: the sequential stream.
	srv.Fault("", httpserver.Fault{NoRange: true})
	o.Checksum = "sha256:" + sha256Hex(data)
	st2, err := OpenStream(context.Background(), srv.URL+"/x.img", o)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	equalBytes(t, readAll(t, st2), data)
	if d, err := st2.Complete(context.Background()); err != nil || d.Checksum != o.Checksum {
		t.Fatalf("%+v %v", d, err)
	}
}

func TestSpool(t *testing.T) {
	dir := t.TempDir()
	data := bytes.Repeat([]byte("spool me "), 300000)
	s, err := Spool(context.Background(), bytes.NewReader(data), dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	if s.Size() != int64(len(data)) {
		t.Fatal(s.Size())
	}
	got := make([]byte, len(data))
	if _, err := s.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	equalBytes(t, got, data)
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("spool file visible: %v", entries)
	}
	if d, err := s.Complete(context.Background()); err != nil || d.BytesFetched != int64(len(data)) {
		t.Fatal(d, err)
	}
	s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Spool(ctx, bytes.NewReader(data), dir, "test"); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if _, err := Spool(context.Background(), bytes.NewReader(data), filepath.Join(dir, "missing"), "test"); err == nil {
		t.Fatal("missing dir accepted")
	}
	// A reader failing mid-way fails the spool.
	if _, err := Spool(context.Background(), io.MultiReader(bytes.NewReader(data), errReader{}), dir, "test"); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatal(err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("boom") }
