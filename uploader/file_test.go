package uploader

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"
)

func aligned(n int) []byte {
	b := make([]byte, n+align)
	a := int(uintptr(unsafe.Pointer(&b[0])) % align)
	if a != 0 {
		a = align - a
	}
	return b[a : a+n]
}

func TestFileCommitAndAbort(t *testing.T) {
	for _, direct := range []bool{true, false} {
		dir := t.TempDir()
		path := filepath.Join(dir, "disk.raw")
		const size = 3<<20 + 1234
		f, err := CreateFile(path, size, FileOptions{NoDirect: !direct})
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, size)
		writes := []struct {
			off int64
			n   int
		}{
			{0, 100},             // unaligned tail
			{4096, 8192},         // aligned
			{1<<20 + 512, 70000}, // ragged head and tail
			{2 << 20, 1 << 20},   // aligned, big
			{size - 1234, 1234},  // end of image
		}
		for i, w := range writes {
			// Memory phase equal to file phase, as the engine does.
			buf := aligned(w.n + 4096)
			p := buf[w.off%4096 : w.off%4096+int64(w.n)]
			for j := range p {
				p[j] = byte(i + 1 + j)
			}
			copy(want[w.off:], p)
			if n, err := f.WriteAt(p, w.off); err != nil || n != w.n {
				t.Fatalf("WriteAt(%d, %d) = %d, %v", w.off, w.n, n, err)
			}
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Fatal("final path exists before Commit")
		}
		if err := f.Commit(); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatal("committed file differs")
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 {
			t.Fatalf("leftover files: %v", entries)
		}

		// Abort leaves nothing.
		f, err = CreateFile(filepath.Join(dir, "other.raw"), size, FileOptions{NoDirect: !direct})
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte("partial"), 0)
		if err := f.Abort(); err != nil {
			t.Fatal(err)
		}
		entries, _ = os.ReadDir(dir)
		for _, e := range entries {
			if strings.Contains(e.Name(), "other") {
				t.Fatalf("abort left %s", e.Name())
			}
		}
	}
}
