package vhdx

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/converter/format/formattest"
)

// VHDX structures sit at 1 MiB-aligned offsets, so a real image is
// megabytes of mostly zeros: a poor fuzz input. FuzzOpen therefore takes
// either a raw image (input starting with "vhdxfile") or a sparse one:
//
//	byte 0     flags: bit 0 recomputes the header and region table CRCs,
//	           so mutations get past the checksums
//	bytes 1-4  file size, little-endian, at most maxFuzzFile
//	then       records: offset (u32 LE), length (u16 LE), bytes
//
// decodeFuzz turns an input into a file; a crasher can be written out with
// it to reproduce with qemu-img.

const maxFuzzFile = 16 << 20 // bounds the BAT, hence the memory, per input

type fuzzFile struct {
	name string
	data []byte // the first headerEnd bytes, dense
	segs []fuzzSeg
	size int64
}

type fuzzSeg struct {
	off int64
	b   []byte
}

const fuzzDense = region2Offset + regionTableSize // up to the end of the second region table

func (f *fuzzFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative offset")
	}
	if off >= f.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), f.size-off))
	clear(p[:n])
	if off < int64(len(f.data)) {
		copy(p[:n], f.data[off:])
	}
	for _, s := range f.segs {
		lo, hi := max(s.off, off), min(s.off+int64(len(s.b)), off+int64(n))
		if lo < hi {
			copy(p[lo-off:hi-off], s.b[lo-s.off:hi-s.off])
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *fuzzFile) Close() error { return nil }
func (f *fuzzFile) Name() string { return f.name }
func (f *fuzzFile) Size() int64  { return f.size }

func decodeFuzz(in []byte) *fuzzFile {
	if bytes.HasPrefix(in, []byte("vhdxfile")) {
		return &fuzzFile{name: "fuzz.vhdx", data: in, size: int64(len(in))}
	}
	if len(in) < 5 {
		return &fuzzFile{name: "fuzz.vhdx", data: in, size: int64(len(in))}
	}
	flags := in[0]
	size := min(int64(binary.LittleEndian.Uint32(in[1:])), maxFuzzFile)
	f := &fuzzFile{name: "fuzz.vhdx", size: size, data: make([]byte, min(size, fuzzDense))}
	for r := in[5:]; len(r) >= 6; {
		off := int64(binary.LittleEndian.Uint32(r))
		n := int(binary.LittleEndian.Uint16(r[4:]))
		r = r[6:]
		n = min(n, len(r))
		b := r[:n]
		r = r[n:]
		if off < int64(len(f.data)) {
			c := copy(f.data[off:], b)
			b, off = b[c:], off+int64(c)
		}
		if len(b) > 0 && off < size {
			f.segs = append(f.segs, fuzzSeg{off, b})
		}
	}
	if flags&1 != 0 && size >= fuzzDense {
		fixHeaderCRC(f.data, header1Offset)
		fixHeaderCRC(f.data, header2Offset)
		fixRegionCRC(f.data, region1Offset)
		fixRegionCRC(f.data, region2Offset)
	}
	return f
}

// encodeFuzz turns a file (as byte ranges) into a FuzzOpen input, keeping
// only the non-zero 4 KiB pages.
func encodeFuzz(parts map[int64][]byte, size int64, flags byte) []byte {
	out := []byte{flags}
	out = binary.LittleEndian.AppendUint32(out, uint32(size))
	for off, b := range parts {
		for i := 0; i < len(b); i += 4096 {
			page := b[i:min(i+4096, len(b))]
			page = bytes.TrimRight(page, "\x00")
			if len(page) == 0 || off+int64(i) >= size {
				continue
			}
			out = binary.LittleEndian.AppendUint32(out, uint32(off+int64(i)))
			out = binary.LittleEndian.AppendUint16(out, uint16(len(page)))
			out = append(out, page...)
		}
	}
	return out
}

func fuzzSeeds(f *testing.F) {
	add := func(bd *builder, flags byte) {
		parts, size := bd.build()
		f.Add(encodeFuzz(parts, size, flags))
	}
	bd := newBuilder(3*miB, miB)
	bd.blocks[0] = bytes.Repeat([]byte{1}, 4096)
	bd.blocks[2] = []byte("last block")
	bd.states[1] = stateZero
	add(bd, 0)
	add(bd, 1)

	bd = newBuilder(5*miB+4096, miB)
	bd.logical = 4096
	bd.blocks[3] = []byte("4k sectors")
	add(bd, 1)

	bd = newBuilder(0, miB)
	add(bd, 0)

	// Past a chunk: a sector bitmap entry between payload entries.
	bd = newBuilder(4097*miB, miB)
	bd.blocks[4095] = []byte("before")
	bd.blocks[4096] = []byte("after")
	add(bd, 1)

	// A dirty log, and a log GUID with no valid entry.
	g := mkGUID(0xdeadbeef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	bd = newBuilder(2*miB, miB)
	bd.logGUID = g
	bd.logData = logEntry(g, 3, []uint64{2 * miB, 3 * miB}, 0x77)
	add(bd, 1)
	bd = newBuilder(2*miB, miB)
	bd.logGUID = g
	add(bd, 1)

	bd = newBuilder(2*miB, miB)
	bd.extraRegions = []region{{id: mkGUID(9, 9, 9), offset: 8 * miB, length: miB, required: true}}
	bd.extraMeta = []extraItem{{id: mkGUID(8, 8, 8), flags: 4, data: []byte("x")}}
	add(bd, 1)

	// Images made by qemu-img, when it is installed.
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return
	}
	dir := f.TempDir()
	for i, args := range [][]string{
		{"-o", "block_size=1M", "3M"},
		{"-o", "subformat=fixed,block_size=1M", "2M"},
		{"-o", "block_size=1M,block_state_zero=off", "2M"},
	} {
		p := filepath.Join(dir, fmt.Sprintf("s%d.vhdx", i))
		cmd := append([]string{"create", "-q", "-f", "vhdx"}, args[:len(args)-1]...)
		if out, err := exec.Command("qemu-img", append(cmd, p, args[len(args)-1])...).CombinedOutput(); err != nil {
			f.Fatalf("qemu-img: %v %s", err, out)
		}
		if out, err := exec.Command("qemu-io", "-f", "vhdx", "-c", "write -P 0x42 1M 8k", p).CombinedOutput(); err != nil {
			f.Fatalf("qemu-io: %v %s", err, out)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(encodeFuzz(map[int64][]byte{0: b}, int64(len(b)), 0))
	}
}

func FuzzOpen(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(runFuzzOne)
}

// runFuzzOne opens one input and, if it opens, checks the extent map and
// reads the disk.
func runFuzzOne(t *testing.T, in []byte) {
	file := decodeFuzz(in)
	img, err := Open(file, format.Options{})
	if err != nil {
		return
	}
	defer img.Close()
	if size := img.Size(); size > MaxVirtualSize {
		t.Fatalf("size %d", size)
	}
	formattest.Check(t, img, true)
}
