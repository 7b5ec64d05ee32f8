package vhd

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

// fuzzSeeds are small images of every kind: hand-built ones (dynamic with
// tiny blocks, differencing with locators) and, when qemu-img is there,
// images it creates. They are kept to a few KiB: the fuzzer's minimization
// of every new input costs time in proportion to its length.
func fuzzSeeds(t testing.TB) [][]byte {
	var seeds [][]byte
	blk := func(bs int, diff bool, fill byte) blockSpec {
		bm := make([]byte, bitmapBytes(int64(bs), diff))
		setBits(bm, 0, min(1, len(bm)))
		return blockSpec{bitmap: bm, data: bytes.Repeat([]byte{fill}, bs)}
	}
	seeds = append(seeds,
		vhdSpec{diskType: diskDynamic, currentSize: 8 * 512, blockSize: 512,
			blocks: map[int64]blockSpec{0: blk(512, false, 1), 3: blk(512, false, 2)}}.build(),
		vhdSpec{diskType: diskDynamic, creator: "vpc ", cyls: 1, heads: 4, secs: 1, currentSize: 4 * 512, blockSize: 1024,
			blocks: map[int64]blockSpec{1: blk(1024, false, 3)}}.build(),
		vhdSpec{diskType: diskDifferencing, currentSize: 4 * 512, blockSize: 512, parentName: "p.vhd",
			locators: []locSpec{{platW2ru, utf16le(`.\p.vhd`)}, {platMacX, []byte("file:///p.vhd")}},
			blocks:   map[int64]blockSpec{2: blk(512, true, 4)}}.build(),
	)
	// A fixed image: 1 KiB of data and a footer.
	ft := vhdSpec{diskType: diskFixed, currentSize: 1024}.footer()
	binary.BigEndian.PutUint64(ft[16:], ^uint64(0))
	binary.BigEndian.PutUint32(ft[64:], checksum(ft, 64))
	seeds = append(seeds, append(bytes.Repeat([]byte{5}, 1024), ft...))

	if _, err := exec.LookPath("qemu-img"); err == nil {
		dir := t.TempDir()
		for _, args := range [][]string{
			{"-o", "subformat=dynamic", "64K"},
			{"-o", "subformat=dynamic,force_size=on", "100000"},
			{"-o", "subformat=fixed,force_size=on", "1K"},
		} {
			p := filepath.Join(dir, "s.vhd")
			a := append([]string{"create", "-q", "-f", "vpc"}, args[:len(args)-1]...)
			a = append(a, p, args[len(args)-1])
			if exec.Command("qemu-img", a...).Run() == nil {
				if d, err := os.ReadFile(p); err == nil && len(d) < 8<<10 {
					seeds = append(seeds, d)
				}
			}
		}
	}
	return seeds
}

func FuzzOpen(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		mf := memFile{bytes.NewReader(data), "/fuzz/image.vhd"}
		Probe(mf, mf.Size())
		img, err := Open(mf, format.Options{})
		if err != nil {
			return
		}
		defer img.Close()
		formattest.Check(t, img, true)
	})
}
