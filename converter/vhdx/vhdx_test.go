package vhdx

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/internal/testutil"
)

func openFile(t testing.TB, path string) (*Image, error) {
	t.Helper()
	f, err := format.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := Open(f, format.Options{})
	if err != nil {
		f.Close()
		return nil, err
	}
	t.Cleanup(func() { img.Close() })
	return img, nil
}

func mustOpen(t testing.TB, path string) *Image {
	t.Helper()
	img, err := openFile(t, path)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return img
}

// checkAgainstQemu compares the reader with qemu-img convert -O raw.
func checkAgainstQemu(t *testing.T, path string) *Image {
	t.Helper()
	want, wantSize := testutil.ReferenceSHA256(t, path, "vhdx")
	img := mustOpen(t, path)
	if img.Size() != wantSize {
		t.Fatalf("Size() = %d, qemu-img converts %d bytes", img.Size(), wantSize)
	}
	if got := testutil.ImageSHA256(t, img); got != want {
		t.Fatalf("SHA-256 %s, qemu-img gives %s", got, want)
	}
	return img
}

// sha256Of hashes the first size bytes of b, zero-extended.
func sha256Of(b []byte, size int64) string {
	h := sha256.New()
	h.Write(b[:min(int64(len(b)), size)])
	if pad := size - int64(len(b)); pad > 0 {
		io.CopyN(h, zeroReader{}, pad)
	}
	return hex.EncodeToString(h.Sum(nil))
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestMatchesQemu(t *testing.T) {
	testutil.Need(t, "qemu-img")
	cases := []struct {
		name string
		size int64
		opts string // -o for qemu-img convert
		io   []string
	}{
		{"dynamic-default", 10*miB + 512, "", nil},
		{"dynamic-1M", 5*miB + 3*512, "block_size=1M", nil},
		{"dynamic-8M", 20*miB + 4096, "block_size=8M", nil},
		{"dynamic-32M", 70 * miB, "block_size=32M", nil},
		{"dynamic-256M-sparse", 300 * miB, "block_size=256M", nil},
		{"dynamic-log4M", 6 * miB, "block_size=1M,log_size=4M", nil},
		{"dynamic-nozero", 9 * miB, "block_size=1M,block_state_zero=off", nil},
		{"fixed-8M", 20*miB + 1536, "subformat=fixed,block_size=8M", nil},
		{"fixed-1M", 3 * miB, "subformat=fixed,block_size=1M", nil},
		{"fixed-32M", 40 * miB, "subformat=fixed", nil},
		{"dynamic-1M-zero-discard", 12 * miB, "block_size=1M", []string{
			"write -z 1M 3M", "discard 6M 2M", "write -z 8704k 100k", "write -P 0xab 10M 200k"}},
		{"dynamic-8M-zero-discard", 30 * miB, "block_size=8M", []string{
			"write -z 0 8M", "discard 8M 8M", "write -P 0x5a 17M 4k"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "src.raw")
			dst := filepath.Join(dir, "img.vhdx")
			if strings.Contains(c.name, "sparse") {
				// A big block size with little data: write a few runs
				// instead of a full pattern, to keep the test light.
				testutil.QemuImg(t, "create", "-f", "vhdx", "-o", c.opts, dst, fmt.Sprint(c.size))
				testutil.QemuIO(t, dst, "vhdx", "write -P 0x11 0 64k", "write -P 0x22 255M 2M", "write -P 0x33 299M 1M")
			} else {
				testutil.Pattern(t, src, c.size, c.size)
				args := []string{"convert", "-f", "raw", "-O", "vhdx"}
				if c.opts != "" {
					args = append(args, "-o", c.opts)
				}
				testutil.QemuImg(t, append(args, src, dst)...)
			}
			if len(c.io) > 0 {
				testutil.QemuIO(t, dst, "vhdx", c.io...)
			}
			img := checkAgainstQemu(t, dst)
			info := img.Info()
			if strings.Contains(c.opts, "fixed") != (info.Subformat == "fixed") {
				t.Errorf("subformat %q for options %q", info.Subformat, c.opts)
			}
		})
	}
}

// TestBitmapInterleave covers images past one chunk (4 GiB with 512-byte
// sectors), where sector bitmap entries sit between payload entries.
func TestBitmapInterleave(t *testing.T) {
	if testing.Short() {
		t.Skip("reads 4 GiB")
	}
	testutil.Need(t, "qemu-img")
	dst := filepath.Join(t.TempDir(), "big.vhdx")
	testutil.QemuImg(t, "create", "-f", "vhdx", "-o", "block_size=1M", dst, fmt.Sprint(4<<30+3*miB))
	testutil.QemuIO(t, dst, "vhdx", "write -P 1 0 4k", "write -P 2 4095M 1M", "write -P 3 4096M 1M",
		"write -P 4 4097M 512k", "write -P 5 4098M 1M")
	img := checkAgainstQemu(t, dst)
	// Block 4096 is the first payload block after the first sector
	// bitmap entry.
	b := make([]byte, 1)
	if _, err := img.ReadAt(b, 4096*miB); err != nil || b[0] != 3 {
		t.Fatalf("byte at 4 GiB = %d, %v; want 3", b[0], err)
	}
}

// TestBATStates patches a qemu image so its blocks take every state that
// reads as zeros, and checks qemu agrees.
func TestBATStates(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	dst := filepath.Join(dir, "img.vhdx")
	testutil.Pattern(t, src, 8*miB, 7)
	testutil.QemuImg(t, "convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M", src, dst)
	b, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	bat := regionOffset(b, batGUID)
	for blk, st := range map[int64]uint64{1: stateNotPresent, 2: stateUndefined, 3: stateZero, 4: stateUnmapped, 5: stateUnmappedV095} {
		binary.LittleEndian.PutUint64(b[bat+8*blk:], st)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
	img := checkAgainstQemu(t, dst)
	e, err := img.Extent(1*miB, 7*miB)
	if err != nil || e != (format.Extent{Start: miB, Length: 5 * miB, Zero: true}) {
		t.Fatalf("Extent = %+v, %v; want 5 MiB of zeros", e, err)
	}
}

// TestHandBuilt covers what qemu-img cannot create: 4 KiB logical sectors
// (which qemu 7.2 refuses to open), non-required unknown structures, a
// chunk boundary with 4 KiB sectors, and header selection.
func TestHandBuilt(t *testing.T) {
	fill := func(n int, c byte) []byte { return bytes.Repeat([]byte{c}, n) }
	cases := []struct {
		name  string
		build func() *builder
	}{
		{"512", func() *builder {
			bd := newBuilder(5*miB+512, miB)
			bd.blocks[0] = fill(miB, 1)
			bd.blocks[4] = fill(miB, 4)
			bd.blocks[5] = fill(512, 5)
			return bd
		}},
		{"4096-logical", func() *builder {
			bd := newBuilder(6*miB+4096, miB)
			bd.logical = 4096
			bd.blocks[1] = fill(miB, 1)
			bd.blocks[6] = fill(4096, 6)
			return bd
		}},
		{"unknown-optional", func() *builder {
			bd := newBuilder(2*miB, miB)
			bd.extraRegions = []region{{id: mkGUID(1, 2, 3), offset: 64 * miB, length: miB}}
			bd.extraMeta = []extraItem{{id: mkGUID(4, 5, 6), flags: 1, data: []byte("hello")}}
			bd.blocks[1] = fill(miB, 9)
			return bd
		}},
		{"header1-active", func() *builder {
			bd := newBuilder(2*miB, miB)
			bd.seq = [2]uint64{9, 3}
			bd.blocks[0] = fill(miB, 3)
			return bd
		}},
		{"zero-size", func() *builder { return newBuilder(0, miB) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bd := c.build()
			path := bd.write(t, filepath.Join(t.TempDir(), "h.vhdx"))
			img := mustOpen(t, path)
			if img.Size() != bd.vsize {
				t.Fatalf("size %d, want %d", img.Size(), bd.vsize)
			}
			// Expected disk: the blocks' data at their places.
			want := sha256.New()
			zero := make([]byte, bd.blockSize)
			for blk := int64(0); blk*int64(bd.blockSize) < bd.vsize; blk++ {
				n := min(int64(bd.blockSize), bd.vsize-blk*int64(bd.blockSize))
				blkData := append(append([]byte(nil), bd.blocks[blk]...), zero...)
				want.Write(blkData[:n])
			}
			if got := testutil.ImageSHA256(t, img); got != hex.EncodeToString(want.Sum(nil)) {
				t.Fatalf("content differs from the blocks written")
			}
		})
	}
}

// TestChunkBoundary4K: with 4 KiB logical sectors a chunk spans 32 GiB,
// too much to hash; read around the first sector bitmap entry instead.
func TestChunkBoundary4K(t *testing.T) {
	bd := newBuilder(130*256*miB+4096, 256*miB) // chunk ratio 2^23*4096/256 MiB = 128
	bd.logical = 4096
	bd.blocks[127] = bytes.Repeat([]byte{7}, 4096)
	bd.blocks[128] = bytes.Repeat([]byte{8}, 4096)
	bd.blocks[130] = bytes.Repeat([]byte{9}, 4096)
	img := mustOpen(t, bd.write(t, filepath.Join(t.TempDir(), "c.vhdx")))
	for _, c := range []struct {
		off  int64
		want byte
	}{{127 * 256 * miB, 7}, {127*256*miB + 4096, 0}, {128 * 256 * miB, 8}, {129 * 256 * miB, 0}, {130 * 256 * miB, 9}} {
		b := make([]byte, 4096)
		if _, err := img.ReadAt(b, c.off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, bytes.Repeat([]byte{c.want}, 4096)) {
			t.Errorf("at %d: got %d..., want %d", c.off, b[0], c.want)
		}
	}
	var got []format.Extent
	for off := int64(0); off < img.Size(); {
		e, err := img.Extent(off, img.Size()-off)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
		off += e.Length
	}
	want := []format.Extent{
		{Start: 0, Length: 127 * 256 * miB, Zero: true},
		{Start: 127 * 256 * miB, Length: 2 * 256 * miB, Allocated: true},
		{Start: 129 * 256 * miB, Length: 256 * miB, Zero: true},
		{Start: 130 * 256 * miB, Length: 4096, Allocated: true},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("extents %v, want %v", got, want)
	}
}

// TestDifferencing: differencing images are refused, naming the parent.
func TestDifferencing(t *testing.T) {
	u16 := func(s string) []byte {
		var b []byte
		for _, c := range s {
			b = binary.LittleEndian.AppendUint16(b, uint16(c))
		}
		return b
	}
	pairs := [][2]string{{"parent_linkage", "{83838383-0001-0002-0304-05060708090a}"}, {"relative_path", `.\parent.vhdx`}}
	loc := make([]byte, 20+12*len(pairs))
	lt := mkGUID(0xb04aefb7, 0xd19e, 0x4a81, 0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13)
	copy(loc, lt[:])
	binary.LittleEndian.PutUint16(loc[18:], uint16(len(pairs)))
	for i, p := range pairs {
		k, v := u16(p[0]), u16(p[1])
		e := 20 + 12*i
		binary.LittleEndian.PutUint32(loc[e:], uint32(len(loc)))
		binary.LittleEndian.PutUint32(loc[e+4:], uint32(len(loc)+len(k)))
		binary.LittleEndian.PutUint16(loc[e+8:], uint16(len(k)))
		binary.LittleEndian.PutUint16(loc[e+10:], uint16(len(v)))
		loc = append(append(loc, k...), v...)
	}
	bd := newBuilder(4*miB, miB)
	bd.flags = 2
	bd.extraMeta = []extraItem{{id: parentLocatorGUID, flags: 4, data: loc}}
	_, err := openFile(t, bd.write(t, filepath.Join(t.TempDir(), "child.avhdx")))
	t.Log(err)
	if !errors.Is(err, format.ErrUnsupported) || !strings.Contains(err.Error(), `relative_path ".\\parent.vhdx"`) {
		t.Fatalf("Open = %v; want ErrUnsupported naming the parent", err)
	}
}

func TestInfo(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	dst := filepath.Join(dir, "img.vhdx")
	testutil.QemuImg(t, "create", "-f", "vhdx", "-o", "block_size=8M", dst, "100M")
	testutil.QemuIO(t, dst, "vhdx", "write -P 1 0 1M", "write -P 2 50M 9M")
	info := mustOpen(t, dst).Info()
	if info.Format != Type || info.Subformat != "dynamic" || info.VirtualSize != 100*miB ||
		info.ClusterSize != 8*miB || info.AllocatedBytes != 3*8*miB {
		t.Fatalf("Info = %+v", info)
	}
	d := info.Details
	if d["logical_sector_size"] != uint32(512) || d["block_size"] != int64(8*miB) || d["has_parent"] != false ||
		!strings.Contains(d["creator"].(string), "QEMU") || d["header_sequence_number"].(uint64) == 0 {
		t.Fatalf("Details = %v", d)
	}
	st, _ := os.Stat(dst)
	if info.FileSize != st.Size() {
		t.Fatalf("FileSize %d, want %d", info.FileSize, st.Size())
	}
}

func TestProbe(t *testing.T) {
	for _, c := range []struct {
		data string
		want bool
	}{{"vhdxfile", true}, {"vhdxfileQEMU", true}, {"vhdxfil", false}, {"conectix", false}, {"", false}} {
		if got := Probe(strings.NewReader(c.data), int64(len(c.data))); got != c.want {
			t.Errorf("Probe(%q) = %v", c.data, got)
		}
	}
}

// TestHugeEmptyExtent: a 64 TiB empty image maps as one zero extent, fast.
func TestHugeEmptyExtent(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dst := filepath.Join(t.TempDir(), "huge.vhdx")
	testutil.QemuImg(t, "create", "-f", "vhdx", "-o", "block_size=32M", dst, "64T")
	img := mustOpen(t, dst)
	start := time.Now()
	e, err := img.Extent(0, img.Size())
	el := time.Since(start)
	if err != nil || e != (format.Extent{Start: 0, Length: 64 * tiB, Zero: true}) {
		t.Fatalf("Extent = %+v, %v", e, err)
	}
	if el > 100*time.Millisecond {
		t.Fatalf("mapping 64 TiB took %v", el)
	}
	t.Logf("64 TiB mapped in %v", el)
	if _, err := img.Extent(img.Size(), 1); err == nil {
		t.Fatal("Extent past the end succeeded")
	}
}

// TestConcurrentReads reads with several goroutines and large buffers, as
// the convert engine does.
func TestConcurrentReads(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	dst := filepath.Join(dir, "img.vhdx")
	const size = 40 * miB
	testutil.Pattern(t, src, size, 3)
	testutil.QemuImg(t, "convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M", src, dst)
	want, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	img := mustOpen(t, dst)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			buf := make([]byte, 4*miB-4096*w+w*7)
			for off := int64(w * 12345); off < size; off += int64(len(buf)) {
				n, err := img.ReadAt(buf, off)
				if err != nil && err != io.EOF {
					errs <- err
					return
				}
				if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
					errs <- fmt.Errorf("worker %d: data differs at %d", w, off)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestLog: a LogGuid alone is not a dirty image (qemu reads it as is); a
// valid log entry is, and both qemu-img convert and ferry refuse it.
func TestLog(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	base := filepath.Join(dir, "base.vhdx")
	testutil.Pattern(t, src, 4*miB, 11)
	testutil.QemuImg(t, "convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M", src, base)
	orig, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	logGUID := mkGUID(0xdeadbeef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	withGUID := func() []byte {
		b := bytes.Clone(orig)
		h := activeHeader(b)
		copy(b[h+48:], logGUID[:])
		fixHeaderCRC(b, h)
		return b
	}
	logOff := int64(binary.LittleEndian.Uint64(orig[activeHeader(orig)+72:]))
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}

	t.Run("guid-only", func(t *testing.T) {
		checkAgainstQemu(t, write("guid.vhdx", withGUID()))
	})
	t.Run("stale-entry-other-guid", func(t *testing.T) {
		b := withGUID()
		copy(b[logOff:], logEntry(mkGUID(1, 1, 1), 5, []uint64{4 * miB}, 0xee))
		checkAgainstQemu(t, write("stale.vhdx", b))
	})
	t.Run("bad-crc-entry", func(t *testing.T) {
		b := withGUID()
		e := logEntry(logGUID, 5, []uint64{4 * miB}, 0xee)
		e[5000] ^= 1
		copy(b[logOff+64*kiB:], e)
		checkAgainstQemu(t, write("badcrc.vhdx", b))
	})
	for _, where := range []int64{0, 256 * kiB, miB - 8*kiB} { // the last one wraps around
		t.Run(fmt.Sprintf("dirty-at-%d", where), func(t *testing.T) {
			b := withGUID()
			e := logEntry(logGUID, 7, []uint64{4 * miB, 2*miB + 4096, 5 * miB}, 0xee)
			for i := 0; i < len(e); i += logSectorSize {
				p := (where + int64(i)) % miB
				copy(b[logOff+p:], e[i:i+logSectorSize])
			}
			p := write("dirty.vhdx", b)
			_, err := openFile(t, p)
			if !errors.Is(err, format.ErrUnsupported) || !strings.Contains(err.Error(), "log replay needed") {
				t.Fatalf("Open = %v, want ErrUnsupported: log replay needed", err)
			}
			out, qerr := exec.Command("qemu-img", "convert", "-O", "raw", p, filepath.Join(dir, "out.raw")).CombinedOutput()
			if qerr == nil || !strings.Contains(string(out), "replay") {
				t.Fatalf("qemu-img convert of the dirty image: %v %s", qerr, out)
			}
		})
	}
	t.Run("bad-descriptor", func(t *testing.T) {
		b := withGUID()
		e := logEntry(logGUID, 7, []uint64{4 * miB}, 0xee)
		copy(e[logHeaderSize:], "junk")
		copy(b[logOff:], e)
		_, err := openFile(t, write("baddesc.vhdx", b))
		if !errors.Is(err, format.ErrCorrupt) {
			t.Fatalf("Open = %v, want ErrCorrupt", err)
		}
	})
}

// TestBadImages: every broken input is refused with the right error kind.
func TestBadImages(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	base := filepath.Join(dir, "base.vhdx")
	testutil.Pattern(t, src, 6*miB, 5)
	testutil.QemuImg(t, "convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M", src, base)
	orig, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	bat := regionOffset(orig, batGUID)
	setRegion := func(b []byte, id guid, off uint64, length uint32) {
		for _, rt := range []int64{region1Offset, region2Offset} {
			n := int(binary.LittleEndian.Uint32(b[rt+8:]))
			for i := 0; i < n; i++ {
				e := b[rt+16+32*int64(i):]
				if guid(e[:16]) == id {
					binary.LittleEndian.PutUint64(e[16:], off)
					binary.LittleEndian.PutUint32(e[24:], length)
				}
			}
			fixRegionCRC(b, rt)
		}
	}
	le32 := func(b []byte, off int64, v uint32) { binary.LittleEndian.PutUint32(b[off:], v) }
	le64 := func(b []byte, off int64, v uint64) { binary.LittleEndian.PutUint64(b[off:], v) }

	cases := []struct {
		name  string
		patch func(b []byte) []byte
		kind  error
		msg   string
	}{
		{"not-vhdx", func(b []byte) []byte { copy(b, "vhdxfilx"); return b }, format.ErrWrongType, "signature"},
		{"truncated-100", func(b []byte) []byte { return b[:100] }, format.ErrCorrupt, "truncated"},
		{"truncated-header", func(b []byte) []byte { return b[:200*kiB] }, format.ErrCorrupt, "truncated"},
		{"truncated-metadata", func(b []byte) []byte { return b[:regionOffset(b, metadataGUID)+1000] }, format.ErrCorrupt, "beyond the end"},
		{"truncated-data", func(b []byte) []byte { return b[:len(b)-miB-1] }, format.ErrCorrupt, "outside the file"},
		{"both-headers-bad-crc", func(b []byte) []byte {
			b[header1Offset+100] ^= 1
			b[header2Offset+100] ^= 1
			return b
		}, format.ErrCorrupt, "CRC-32C mismatch"},
		{"same-seq-different", func(b []byte) []byte {
			copy(b[header1Offset+8:], b[header2Offset+8:header2Offset+16])
			b[header1Offset+20] ^= 1
			fixHeaderCRC(b, header1Offset)
			return b
		}, format.ErrCorrupt, "both headers"},
		{"header-version", func(b []byte) []byte {
			for _, h := range []int64{header1Offset, header2Offset} {
				b[h+66] = 2
				fixHeaderCRC(b, h)
			}
			return b
		}, format.ErrCorrupt, "version 2"},
		{"both-region-tables-bad", func(b []byte) []byte {
			b[region1Offset+40] ^= 1
			b[region2Offset+40] ^= 1
			return b
		}, format.ErrCorrupt, "no valid region table"},
		{"bat-beyond-eof", func(b []byte) []byte { setRegion(b, batGUID, 1<<40, miB); return b }, format.ErrCorrupt, "beyond the end"},
		{"bat-unaligned", func(b []byte) []byte { setRegion(b, batGUID, uint64(bat)+4096, miB); return b }, format.ErrCorrupt, "1 MiB"},
		{"bat-too-small", func(b []byte) []byte {
			// 10 TiB of 1 MiB blocks needs an 80 MiB BAT.
			le64(b, metaItemOffset(b, virtualSizeGUID), 10*tiB)
			return b
		}, format.ErrCorrupt, "too small"},
		{"regions-overlap", func(b []byte) []byte { setRegion(b, metadataGUID, uint64(bat), miB); return b }, format.ErrCorrupt, "overlap"},
		{"region-over-log", func(b []byte) []byte { setRegion(b, batGUID, miB, miB); return b }, format.ErrCorrupt, "overlap"},
		{"absurd-size", func(b []byte) []byte { le64(b, metaItemOffset(b, virtualSizeGUID), 1<<62); return b }, format.ErrCorrupt, "64 TiB"},
		{"block-size-not-pow2", func(b []byte) []byte { le32(b, metaItemOffset(b, fileParamsGUID), 3*miB); return b }, format.ErrCorrupt, "power of two"},
		{"block-size-512M", func(b []byte) []byte { le32(b, metaItemOffset(b, fileParamsGUID), 512*miB); return b }, format.ErrCorrupt, "power of two"},
		{"logical-1024", func(b []byte) []byte { le32(b, metaItemOffset(b, logicalSectGUID), 1024); return b }, format.ErrCorrupt, "512 or 4096"},
		{"has-parent", func(b []byte) []byte { le32(b, metaItemOffset(b, fileParamsGUID)+4, 2); return b }, format.ErrUnsupported, "differencing"},
		{"metadata-item-outside", func(b []byte) []byte { le32(b, metaEntry(b, virtualSizeGUID)+16, 2*miB); return b }, format.ErrCorrupt, "not inside"},
		{"metadata-item-missing", func(b []byte) []byte {
			e := metaEntry(b, page83GUID)
			b[e] ^= 0xff // now an unknown, non-required item
			le32(b, e+24, 0)
			return b
		}, format.ErrCorrupt, "missing"},
		{"metadata-item-twice", func(b []byte) []byte {
			e := metaEntry(b, page83GUID)
			copy(b[e:e+16], logicalSectGUID[:])
			return b
		}, format.ErrCorrupt, "twice"},
		{"metadata-bad-signature", func(b []byte) []byte { b[regionOffset(b, metadataGUID)] = 'M'; return b }, format.ErrCorrupt, "metadata"},
		{"unknown-required-metadata", func(b []byte) []byte {
			e := metaEntry(b, page83GUID)
			b[e] ^= 0xff // unknown item, flags keep IsRequired
			return b
		}, format.ErrUnsupported, "required metadata item"},
		{"unknown-required-region", func(b []byte) []byte {
			for _, rt := range []int64{region1Offset, region2Offset} {
				le32(b, rt+8, 3)
				e := b[rt+16+64:]
				id := mkGUID(0xabcdef, 1, 2)
				copy(e, id[:])
				binary.LittleEndian.PutUint64(e[16:], 1<<30)
				binary.LittleEndian.PutUint32(e[24:], miB)
				binary.LittleEndian.PutUint32(e[28:], 1)
				fixRegionCRC(b, rt)
			}
			return b
		}, format.ErrUnsupported, "required region"},
		{"block-beyond-eof", func(b []byte) []byte { le64(b, bat+8, 1<<40|stateFullyPresent); return b }, format.ErrCorrupt, "outside the file"},
		{"block-in-header", func(b []byte) []byte { le64(b, bat+8, stateFullyPresent); return b }, format.ErrCorrupt, "header section"},
		{"block-over-bat", func(b []byte) []byte { le64(b, bat+8, uint64(bat)|stateFullyPresent); return b }, format.ErrCorrupt, "overlaps"},
		{"partially-present", func(b []byte) []byte { le64(b, bat+8, statePartiallyPresent); return b }, format.ErrCorrupt, "PARTIALLY_PRESENT"},
		{"state-4", func(b []byte) []byte { le64(b, bat+8, 4); return b }, format.ErrCorrupt, "invalid BAT state"},
		{"log-offset-unaligned", func(b []byte) []byte {
			h := activeHeader(b)
			le64(b, h+72, miB+4096)
			fixHeaderCRC(b, h)
			return b
		}, format.ErrCorrupt, "log offset"},
		{"log-version", func(b []byte) []byte {
			h := activeHeader(b)
			b[h+64] = 1
			fixHeaderCRC(b, h)
			return b
		}, format.ErrCorrupt, "log version"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.patch(bytes.Clone(orig))
			p := filepath.Join(t.TempDir(), "bad.vhdx")
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			img, err := openFile(t, p)
			if testing.Verbose() {
				// Record qemu's verdict: where it reads what ferry
				// refuses, the difference is deliberate (see the case).
				out, qerr := exec.Command("qemu-img", "convert", "-f", "vhdx", "-O", "raw", p, filepath.Join(t.TempDir(), "o.raw")).CombinedOutput()
				t.Logf("qemu-img convert: %v %s", qerr, bytes.TrimSpace(out))
			}
			if err == nil {
				img.Close()
				t.Fatalf("Open succeeded")
			}
			if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("Open = %v; want %v mentioning %q", err, c.kind, c.msg)
			}
		})
	}
}

// TestRecovery: damage that the spec's redundancy absorbs.
func TestRecovery(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	base := filepath.Join(dir, "base.vhdx")
	testutil.Pattern(t, src, 3*miB, 9)
	testutil.QemuImg(t, "convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M", src, base)
	want, _ := testutil.ReferenceSHA256(t, base, "vhdx")
	orig, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		patch     func(b []byte)
		qemuReads bool
	}{
		// qemu falls back to the other header too.
		{"header1-bad-crc", func(b []byte) { b[header1Offset+200] ^= 1 }, true},
		{"header2-bad-crc", func(b []byte) { b[header2Offset+200] ^= 1 }, true},
		// qemu drops the partial last sector.
		{"size-not-sector-multiple", func(b []byte) {
			binary.LittleEndian.PutUint64(b[metaItemOffset(b, virtualSizeGUID):], 3*miB-100)
		}, true},
		// qemu reads only the first copy and refuses this image; the spec
		// keeps the second copy for this case.
		{"region-table1-bad", func(b []byte) { b[region1Offset+40] ^= 1 }, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := bytes.Clone(orig)
			c.patch(b)
			p := filepath.Join(t.TempDir(), "r.vhdx")
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			if c.qemuReads {
				checkAgainstQemu(t, p)
				return
			}
			if got := testutil.ImageSHA256(t, mustOpen(t, p)); got != want {
				t.Fatalf("content differs")
			}
		})
	}
}

func TestTruncatedEverywhere(t *testing.T) {
	bd := newBuilder(3*miB, miB)
	bd.blocks[0] = bytes.Repeat([]byte{1}, miB)
	bd.blocks[2] = bytes.Repeat([]byte{2}, 100)
	b := bd.bytes()
	p := filepath.Join(t.TempDir(), "t.vhdx")
	for _, n := range []int{0, 7, 8, 520, 64 * kiB, 68 * kiB, 130 * kiB, 192 * kiB, 300 * kiB, miB, 2 * miB, 2*miB + 8, 3*miB + 100, 4*miB + 10, 5*miB + 1, len(b) - miB} {
		if err := os.WriteFile(p, b[:n], 0o644); err != nil {
			t.Fatal(err)
		}
		if img, err := openFile(t, p); err == nil {
			img.Close()
			t.Errorf("truncated to %d: Open succeeded", n)
		} else if !errors.Is(err, format.ErrCorrupt) && !errors.Is(err, format.ErrWrongType) {
			t.Errorf("truncated to %d: %v", n, err)
		}
	}
	// The last block may end in the file where the virtual size ends
	// rather than at its block size (qemu made such files); it reads fine.
	bd = newBuilder(2*miB+512, miB)
	bd.blocks[2] = bytes.Repeat([]byte{2}, 512)
	b = bd.bytes()
	if err := os.WriteFile(p, b[:len(b)-miB+512], 0o644); err != nil {
		t.Fatal(err)
	}
	img := mustOpen(t, p)
	if got, want := testutil.ImageSHA256(t, img), sha256Of(append(make([]byte, 2*miB), bytes.Repeat([]byte{2}, 512)...), 2*miB+512); got != want {
		t.Fatal("content differs")
	}
	if err := os.WriteFile(p, b[:len(b)-miB+511], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := openFile(t, p); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("last block one byte short: %v", err)
	}
}
