package vmdk

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/internal/testutil"
)

// pipeFrom returns a reader that only streams b (no ReaderAt, no Seek),
// written in odd-sized pieces by another goroutine.
func pipeFrom(b []byte) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		for len(b) > 0 {
			n := min(len(b), 7919)
			if _, err := pw.Write(b[:n]); err != nil {
				return
			}
			b = b[n:]
		}
		pw.Close()
	}()
	return bufio.NewReaderSize(pr, 4096)
}

// streamToRaw rebuilds the raw disk from a stream.
func streamToRaw(r io.Reader) ([]byte, error) {
	var out []byte
	last := int64(-1)
	err := ReadStream(r, func(capacity int64) error {
		out = make([]byte, capacity)
		return nil
	}, func(off int64, data []byte) error {
		if off <= last || off+int64(len(data)) > int64(len(out)) || len(data) == 0 {
			return fmt.Errorf("bad emit at %d (%d bytes) after %d", off, len(data), last)
		}
		last = off
		copy(out[off:], data)
		return nil
	})
	return out, err
}

func TestReadStream(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	type src struct {
		name string
		path string
	}
	var srcs []src
	for i, size := range []int64{4 << 20, 3<<20 + 1536, 1000001} {
		raw := filepath.Join(dir, fmt.Sprintf("p%d.raw", i))
		testutil.Pattern(t, raw, size, int64(30+i))
		p := filepath.Join(dir, fmt.Sprintf("qemu%d.vmdk", i))
		testutil.QemuImg(t, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, p)
		srcs = append(srcs, src{fmt.Sprintf("qemu-%d", size), p})
	}
	data := pattern(t, filepath.Join(dir, "v.raw"), 5<<20+1536, 40)
	for _, b := range []struct {
		name string
		o    buildOpts
	}{
		{"vmware", buildOpts{stream: true}},
		{"vmware-small-grains", buildOpts{stream: true, grainSectors: 8, gtes: 32, omitEmptyGTs: true}},
		{"vmware-zeroed", buildOpts{stream: true, zeroGrain: true, zeroGrains: []int64{2, 3, 70}}},
	} {
		p := writeFile(t, filepath.Join(dir, b.name+".vmdk"), buildSparse(t, data, b.o))
		srcs = append(srcs, src{b.name, p})
	}
	for _, s := range srcs {
		t.Run(s.name, func(t *testing.T) {
			wantSum, wantSize := testutil.ReferenceSHA256(t, s.path, "vmdk")
			b, err := os.ReadFile(s.path)
			if err != nil {
				t.Fatal(err)
			}
			out, err := streamToRaw(pipeFrom(b))
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(out)
			if int64(len(out)) != wantSize || hex.EncodeToString(sum[:]) != wantSum {
				t.Fatalf("stream gives %d bytes %x, qemu-img %d bytes %s", len(out), sum, wantSize, wantSum)
			}
		})
	}
}

// streamHeader is a streamOptimized header (GD at the end) followed by the
// padding up to the first marker at sector 1.
func streamHeader(capSectors, grainSectors uint64) []byte {
	h := make([]byte, 512)
	le := binary.LittleEndian
	copy(h, magicKDMV)
	le.PutUint32(h[4:], 3)
	le.PutUint32(h[8:], flagNLDetect|flagCompress|flagMarkers)
	le.PutUint64(h[12:], capSectors)
	le.PutUint64(h[20:], grainSectors)
	le.PutUint32(h[44:], 512)
	le.PutUint64(h[56:], gdAtEnd)
	le.PutUint64(h[64:], 1)
	le.PutUint16(h[77:], compressDeflate)
	return h
}

// grainRec is a grain marker with payload deflated (or raw bytes as the
// "compressed" data when raw is set), padded to a sector.
func grainRec(lba uint64, payload []byte, raw bool) []byte {
	var z bytes.Buffer
	if raw {
		z.Write(payload)
	} else {
		w := zlib.NewWriter(&z)
		w.Write(payload)
		w.Close()
	}
	b := make([]byte, 12, 12+z.Len()+512)
	binary.LittleEndian.PutUint64(b, lba)
	binary.LittleEndian.PutUint32(b[8:], uint32(z.Len()))
	b = append(b, z.Bytes()...)
	for len(b)%512 != 0 {
		b = append(b, 0)
	}
	return b
}

func metaRec(sectors uint64, typ uint32) []byte {
	b := make([]byte, 512+sectors*512)
	binary.LittleEndian.PutUint64(b, sectors)
	binary.LittleEndian.PutUint32(b[12:], typ)
	return b
}

func TestReadStreamErrors(t *testing.T) {
	g := bytes.Repeat([]byte("grain data "), 4096)[:4096] // one 8-sector grain
	hdr := streamHeader(64, 8)
	eos := metaRec(0, markerEOS)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	okStream := cat(hdr, grainRec(0, g, false), metaRec(1, markerGT), grainRec(8, g, false), metaRec(1, markerGD), metaRec(1, markerFooter), eos)
	if out, err := streamToRaw(bytes.NewReader(okStream)); err != nil || !bytes.Equal(out[:4096], g) || !bytes.Equal(out[4096:8192], g) {
		t.Fatalf("hand-made stream: %v", err)
	}
	sparseFile := buildSparse(t, g, buildOpts{})
	withParent := buildSparse(t, g, buildOpts{stream: true, desc: "# Disk DescriptorFile\ncreateType=\"streamOptimized\"\nparentFileNameHint=\"base.vmdk\"\nRW 8 SPARSE \"x.vmdk\"\n"})
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, format.ErrWrongType},
		{"not-vmdk", bytes.Repeat([]byte{1}, 4096), format.ErrWrongType},
		{"monolithicSparse", sparseFile, format.ErrUnsupported},
		{"delta", withParent, format.ErrUnsupported},
		{"header-only", hdr, format.ErrCorrupt},
		{"no-eos", okStream[:len(okStream)-512], format.ErrCorrupt},
		{"cut-grain", okStream[:512+300], format.ErrCorrupt},
		{"decreasing", cat(hdr, grainRec(8, g, false), grainRec(0, g, false), eos), format.ErrCorrupt},
		{"duplicate", cat(hdr, grainRec(8, g, false), grainRec(8, g, false), eos), format.ErrCorrupt},
		{"unaligned", cat(hdr, grainRec(3, g, false), eos), format.ErrCorrupt},
		{"beyond-capacity", cat(hdr, grainRec(64, g, false), eos), format.ErrCorrupt},
		{"corrupt-grain", cat(hdr, grainRec(0, bytes.Repeat([]byte{0xee}, 100), true), eos), format.ErrCorrupt},
		{"grain-too-long", cat(hdr, grainRec(0, append(bytes.Clone(g), 1), false), eos), format.ErrCorrupt},
		{"grain-too-short", cat(hdr, grainRec(0, g[:1000], false), eos), format.ErrCorrupt},
		{"bad-checksum", cat(hdr, func() []byte { r := grainRec(0, g, false); r[12+len(deflated(g))-1] ^= 1; return r }(), eos), format.ErrCorrupt},
		{"huge-size", cat(hdr, func() []byte { r := grainRec(0, g, false); binary.LittleEndian.PutUint32(r[8:], 1<<31); return r }(), eos), format.ErrCorrupt},
		{"unknown-marker", cat(hdr, metaRec(0, 9), eos), format.ErrCorrupt},
		{"capacity-2^62", cat(streamHeader(1<<62, 8), eos), format.ErrCorrupt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := streamToRaw(pipeFrom(tc.b))
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func deflated(b []byte) []byte {
	var z bytes.Buffer
	w := zlib.NewWriter(&z)
	w.Write(b)
	w.Close()
	return z.Bytes()
}

// TestReadStreamStops: an emit or onHeader error stops everything, is
// returned as is, and leaves no goroutine behind.
func TestReadStreamStops(t *testing.T) {
	dir := t.TempDir()
	data := pattern(t, filepath.Join(dir, "p.raw"), 4<<20, 50)
	img := buildSparse(t, data, buildOpts{stream: true, grainSectors: 8})
	before := runtime.NumGoroutine()
	boom := errors.New("boom")
	n := 0
	err := ReadStream(bytes.NewReader(img), func(int64) error { return nil }, func(int64, []byte) error {
		n++
		if n == 10 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || n != 10 {
		t.Fatalf("err = %v after %d emits", err, n)
	}
	err = ReadStream(bytes.NewReader(img), func(int64) error { return boom }, func(int64, []byte) error {
		t.Fatal("emit after onHeader failed")
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > before {
		t.Fatalf("%d goroutines left running (%d before)", g-before, before)
	}
}
