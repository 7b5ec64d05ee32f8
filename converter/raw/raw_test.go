package raw

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/hikube/ferry/converter/format"
)

func TestExtentFindsHoles(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sparse.raw")
	f, _ := os.Create(p)
	f.Truncate(64 << 20)
	f.WriteAt(bytes.Repeat([]byte{1}, 1<<20), 16<<20)
	f.WriteAt([]byte{2}, 64<<20-1)
	f.Close()
	of, err := format.OpenFile(p)
	if err != nil {
		t.Fatal(err)
	}
	img, err := Open(of, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var data int64
	for off := int64(0); off < img.Size(); {
		e, err := img.Extent(off, img.Size()-off)
		if err != nil {
			t.Fatal(err)
		}
		if e.Start != off || e.Length <= 0 {
			t.Fatalf("bad extent %+v at %d", e, off)
		}
		if !e.Zero {
			data += e.Length
		}
		off += e.Length
	}
	// File systems allocate in blocks: at least the 1 MiB + 1 byte written,
	// far less than the 64 MiB file.
	if data < 1<<20 || data > 4<<20 {
		t.Fatalf("data extents cover %d bytes", data)
	}
	buf := make([]byte, 10)
	if n, err := img.ReadAt(buf, 64<<20-5); n != 5 || err != io.EOF || buf[4] != 2 {
		t.Fatalf("read at end: %d %v %v", n, err, buf)
	}
	if _, err := img.Extent(0, 65<<20); err == nil {
		t.Fatal("out of range extent accepted")
	}
}

// memFile is an in-memory format.File whose data may be shorter than it
// claims (a truncated source).
type memFile struct {
	*bytes.Reader
	size int64
}

func (m memFile) Name() string { return "mem" }
func (m memFile) Size() int64  { return m.size }
func (m memFile) Close() error { return nil }

func TestShortSourceIsAnError(t *testing.T) {
	img, _ := Open(memFile{bytes.NewReader(make([]byte, 100)), 200}, format.Options{})
	if _, err := img.ReadAt(make([]byte, 150), 0); err == nil || err == io.EOF {
		t.Fatalf("short source read: %v, want an error", err)
	}
}
