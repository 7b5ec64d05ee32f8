package vdi

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/converter/format/formattest"
)

// buildVDI lays out a v1.1 header, the block map and, for each allocated
// entry, as much of its block as the disk size uses (fill byte = entry+1).
func buildVDI(diskSize uint64, imageType uint32, bmap []uint32) []byte {
	le := binary.LittleEndian
	h := make([]byte, headerSize)
	copy(h, "<<< ferry test VDI >>>\n")
	le.PutUint32(h[0x40:], signature)
	le.PutUint32(h[0x44:], version11)
	le.PutUint32(h[0x48:], 0x180)
	le.PutUint32(h[0x4c:], imageType)
	mapBytes := (len(bmap)*4 + 511) &^ 511
	le.PutUint32(h[0x154:], headerSize)
	le.PutUint32(h[0x158:], uint32(headerSize+mapBytes))
	le.PutUint32(h[0x168:], sectorSize)
	le.PutUint64(h[0x170:], diskSize)
	le.PutUint32(h[0x178:], blockSize)
	le.PutUint32(h[0x180:], uint32(len(bmap)))
	h[0x188] = 0x42
	m := make([]byte, mapBytes)
	var data []byte
	for i, e := range bmap {
		le.PutUint32(m[4*i:], e)
		if e < entryDiscarded {
			used := min(uint64(blockSize), diskSize-uint64(i)*blockSize)
			end := int(uint64(e)*blockSize + used)
			if len(data) < end {
				data = append(data, make([]byte, end-len(data))...)
			}
			copy(data[uint64(e)*blockSize:end], bytes.Repeat([]byte{byte(e + 1)}, int(used)))
		}
	}
	return append(append(h, m...), data...)
}

type memFile struct {
	*bytes.Reader
	name string
}

func (m memFile) Name() string { return m.name }
func (m memFile) Close() error { return nil }

func FuzzOpen(f *testing.F) {
	f.Add(buildVDI(4096, typeStatic, []uint32{0}))
	f.Add(buildVDI(3000, typeDynamic, []uint32{0}))
	f.Add(buildVDI(2<<20+4096, typeDynamic, []uint32{entryUnallocated, entryDiscarded, 0}))
	f.Add(buildVDI(8<<20, typeDynamic, []uint32{entryUnallocated, entryUnallocated, entryUnallocated, entryUnallocated, entryUnallocated, entryUnallocated, entryUnallocated, entryUnallocated}))
	if _, err := exec.LookPath("qemu-img"); err == nil {
		p := filepath.Join(f.TempDir(), "s.vdi")
		if exec.Command("qemu-img", "create", "-q", "-f", "vdi", p, "3M").Run() == nil {
			if d, err := os.ReadFile(p); err == nil {
				f.Add(d)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		mf := memFile{bytes.NewReader(data), "/fuzz/image.vdi"}
		Probe(mf, mf.Size())
		img, err := Open(mf, format.Options{})
		if err != nil {
			return
		}
		defer img.Close()
		formattest.Check(t, img, true)
	})
}

// TestBuilt reads hand-built images whose content is known.
func TestBuilt(t *testing.T) {
	d := buildVDI(2<<20+4096, typeDynamic, []uint32{entryUnallocated, 1, 0})
	img, err := Open(memFile{bytes.NewReader(d), "built.vdi"}, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, img.Size())
	if n, err := img.ReadAt(b, 0); n != len(b) || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	want := append(append(make([]byte, 1<<20), bytes.Repeat([]byte{2}, 1<<20)...), bytes.Repeat([]byte{1}, 4096)...)
	if !bytes.Equal(b, want) {
		t.Fatal("content differs")
	}
	if in := img.Info(); in.AllocatedBytes != 1<<20+4096 || in.Details["uuid"] != "00000042-0000-0000-0000-000000000000" {
		t.Fatalf("Info = %+v", in)
	}
}
