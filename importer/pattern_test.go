package importer

import (
	"bytes"
	"compress/zlib"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hikube/ferry/internal/testpeer/httpserver"
	"github.com/hikube/ferry/internal/testutil"
	"github.com/lima-vm/go-qcow2reader"
	"github.com/lima-vm/go-qcow2reader/image"
)

// virtualSHA256 reads img's virtual disk the way the convert engine does:
// workers take consecutive chunks in order.
func virtualSHA256(t testing.TB, size int64, workers int, chunk int64, readAt func([]byte, int64) error) string {
	t.Helper()
	n := (size + chunk - 1) / chunk
	parts := make([][]byte, n)
	var mu sync.Mutex
	next := int64(0)
	var wg sync.WaitGroup
	var firstErr error
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				off := i * chunk
				buf := make([]byte, min(chunk, size-off))
				if err := readAt(buf, off); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				parts[i] = buf
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	h := sha256.New()
	for _, p := range parts {
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// qcow2 read through go-qcow2reader straight from HTTP: byte-exact, each
// byte fetched about once.
func TestQcow2OverHTTP(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	testutil.Pattern(t, raw, 64<<20, 7)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"plain", nil},
		{"compressed", []string{"-c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := filepath.Join(dir, tc.name+".qcow2")
			testutil.QemuImg(t, append(append([]string{"convert", "-O", "qcow2"}, tc.args...), raw, img)...)
			want, _ := testutil.ReferenceSHA256(t, img, "qcow2")
			st, _ := os.Stat(img)
			srv := httpserver.Start(t, dir)
			o := testOptions()
			o.Checksum = "sha256:" + fileSHA(t, img)
			s := mustOpen(t, srv.URL+"/"+filepath.Base(img), o)
			q, err := qcow2reader.Open(s)
			if err != nil {
				t.Fatal(err)
			}
			got := virtualSHA256(t, q.Size(), 4, 2<<20, func(b []byte, off int64) error {
				_, err := q.ReadAt(b, off)
				if err == io.EOF {
					err = nil
				}
				return err
			})
			if got != want {
				t.Fatalf("virtual disk sha256 %s, qemu-img says %s", got, want)
			}
			d := mustComplete(t, s)
			logEngine(t, s)
			if d.Checksum != o.Checksum {
				t.Fatalf("checksum %q", d.Checksum)
			}
			ratio := float64(srv.BytesServed()) / float64(st.Size())
			t.Logf("%s: file %d bytes, served %d (%.4f), %d requests", tc.name, st.Size(), srv.BytesServed(), ratio, srv.Requests())
			checkOnce(t, srv.BytesServed(), st.Size(), o.BlockSize)
		})
	}
}

func fileSHA(t testing.TB, p string) string {
	s, _ := testutil.SHA256File(t, p)
	return s
}

var _ image.Image

// VMDK streamOptimized as VMware writes it (OVA exports): grain tables
// after the grains they cover, the grain directory and a footer at the
// end. A reader starts at the footer, reads the directory and every table
// (small reads far ahead of the stream), then the grains in order.

const (
	vmdkGrainSectors = 32 // 16 KiB grains: 8 MiB per grain table
	vmdkGTEs         = 512
	sector           = 512
	gdAtEnd          = ^uint64(0)
)

type vmdkHeader struct {
	Magic, Version, Flags                     uint32
	Capacity, GrainSize, DescOffset, DescSize uint64
	NumGTEsPerGT                              uint32
	RGDOffset, GDOffset, OverHead             uint64
	Unclean                                   uint8
	SingleEnd, NonEnd, DoubleEnd1, DoubleEnd2 byte
	CompressAlgorithm                         uint16
}

// buildStreamOptimized writes raw as a VMware-style streamOptimized VMDK.
func buildStreamOptimized(t testing.TB, raw, out string) {
	t.Helper()
	data, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	grain := vmdkGrainSectors * sector
	capacity := uint64(len(data)) / sector
	nGrains := (len(data) + grain - 1) / grain
	nGTs := (nGrains + vmdkGTEs - 1) / vmdkGTEs
	desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n"+
		"RW %d SPARSE \"disk.vmdk\"\n\nddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"%d\"\nddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"ide\"\n",
		capacity, capacity/(16*63))
	hdr := vmdkHeader{Magic: 0x564d444b, Version: 3, Flags: 0x30001, Capacity: capacity, GrainSize: vmdkGrainSectors,
		DescOffset: 1, DescSize: 20, NumGTEsPerGT: vmdkGTEs, GDOffset: gdAtEnd, OverHead: 128,
		SingleEnd: '\n', NonEnd: ' ', DoubleEnd1: '\r', DoubleEnd2: '\n', CompressAlgorithm: 1}
	var f bytes.Buffer
	writeHdr := func(h vmdkHeader) {
		var b [sector]byte
		var hb bytes.Buffer
		binary.Write(&hb, binary.LittleEndian, h)
		copy(b[:], hb.Bytes())
		f.Write(b[:])
	}
	pad := func() {
		if r := f.Len() % sector; r != 0 {
			f.Write(make([]byte, sector-r))
		}
	}
	marker := func(numSectors uint64, typ uint32) {
		var b [sector]byte
		binary.LittleEndian.PutUint64(b[0:], numSectors)
		binary.LittleEndian.PutUint32(b[12:], typ)
		f.Write(b[:])
	}
	writeHdr(hdr)
	f.WriteString(desc)
	f.Write(make([]byte, int(hdr.OverHead)*sector-f.Len()))
	gd := make([]uint32, nGTs)
	zero := make([]byte, grain)
	for g := 0; g < nGTs; g++ {
		gt := make([]uint32, vmdkGTEs)
		any := false
		for e := 0; e < vmdkGTEs; e++ {
			i := g*vmdkGTEs + e
			if i >= nGrains {
				break
			}
			chunk := data[i*grain : min((i+1)*grain, len(data))]
			if bytes.Equal(chunk, zero[:len(chunk)]) {
				continue
			}
			var z bytes.Buffer
			zw := zlib.NewWriter(&z)
			zw.Write(chunk)
			zw.Close()
			gt[e] = uint32(f.Len() / sector)
			any = true
			var m [12]byte
			binary.LittleEndian.PutUint64(m[0:], uint64(i*vmdkGrainSectors))
			binary.LittleEndian.PutUint32(m[8:], uint32(z.Len()))
			f.Write(m[:])
			f.Write(z.Bytes())
			pad()
		}
		if !any {
			continue
		}
		marker(vmdkGTEs*4/sector, 1) // grain table
		gd[g] = uint32(f.Len() / sector)
		binary.Write(&f, binary.LittleEndian, gt)
	}
	marker(uint64((nGTs*4+sector-1)/sector), 2) // grain directory
	gdOff := f.Len() / sector
	binary.Write(&f, binary.LittleEndian, gd)
	pad()
	marker(1, 3) // footer
	foot := hdr
	foot.GDOffset = uint64(gdOff)
	writeHdr(foot)
	f.Write(make([]byte, sector)) // end of stream
	if err := os.WriteFile(out, f.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// streamOptimizedSHA256 reads a streamOptimized VMDK from r the way a
// metadata-first reader and the convert engine do, and returns the
// SHA-256 of its virtual disk.
func streamOptimizedSHA256(t testing.TB, r io.ReaderAt, size int64) string {
	t.Helper()
	readHdr := func(off int64) vmdkHeader {
		b := make([]byte, sector)
		if _, err := r.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		var h vmdkHeader
		binary.Read(bytes.NewReader(b), binary.LittleEndian, &h)
		return h
	}
	h := readHdr(0)
	if h.GDOffset == gdAtEnd {
		h = readHdr(size - 2*sector) // footer, before the end-of-stream marker
	}
	grain := int64(h.GrainSize) * sector
	nGrains := (int64(h.Capacity)*sector + grain - 1) / grain
	nGTs := (nGrains + vmdkGTEs - 1) / vmdkGTEs
	gdb := make([]byte, nGTs*4)
	if _, err := r.ReadAt(gdb, int64(h.GDOffset)*sector); err != nil {
		t.Fatal(err)
	}
	offsets := make([]int64, nGrains) // host offset of each grain, 0 for none
	for g := int64(0); g < nGTs; g++ {
		gtOff := int64(binary.LittleEndian.Uint32(gdb[g*4:]))
		if gtOff == 0 {
			continue
		}
		gt := make([]byte, vmdkGTEs*4)
		if _, err := r.ReadAt(gt, gtOff*sector); err != nil {
			t.Fatal(err)
		}
		for e := int64(0); e < vmdkGTEs && g*vmdkGTEs+e < nGrains; e++ {
			offsets[g*vmdkGTEs+e] = int64(binary.LittleEndian.Uint32(gt[e*4:])) * sector
		}
	}
	vsize := int64(h.Capacity) * sector
	perChunk := int64(4<<20) / grain
	return virtualSHA256(t, vsize, 4, perChunk*grain, func(b []byte, off int64) error {
		first := off / grain
		last := (off + int64(len(b)) - 1) / grain
		// One coalesced read spanning the chunk's grains (they lie in
		// order), up to the end of the last one's maximum size.
		lo, hi := int64(-1), int64(0)
		for i := first; i <= last; i++ {
			if o := offsets[i]; o != 0 {
				if lo < 0 {
					lo = o
				}
				hi = max(hi, min(o+12+grain+grain/8, size))
			}
		}
		if lo < 0 {
			clear(b)
			return nil
		}
		span := make([]byte, hi-lo)
		if n, err := r.ReadAt(span, lo); err != nil && !(err == io.EOF && lo+int64(n) == hi) {
			return err
		}
		for i := first; i <= last; i++ {
			dst := b[(i-first)*grain : min((i-first+1)*grain, int64(len(b)))]
			o := offsets[i]
			if o == 0 {
				clear(dst)
				continue
			}
			p := span[o-lo:]
			n := binary.LittleEndian.Uint32(p[8:])
			zr, err := zlib.NewReader(bytes.NewReader(p[12 : 12+n]))
			if err != nil {
				return fmt.Errorf("grain %d: %v", i, err)
			}
			if _, err := io.ReadFull(zr, dst); err != nil {
				return fmt.Errorf("grain %d: %v", i, err)
			}
		}
		return nil
	})
}

func TestStreamOptimizedVMDKOverHTTP(t *testing.T) {
	testutil.Need(t, "qemu-img")
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	testutil.Pattern(t, raw, 64<<20, 11)
	vmdk := filepath.Join(dir, "disk.vmdk")
	buildStreamOptimized(t, raw, vmdk)
	want, _ := testutil.SHA256File(t, raw)
	// The fixture must be a VMDK qemu-img reads as the raw disk.
	if ref, _ := testutil.ReferenceSHA256(t, vmdk, "vmdk"); ref != want {
		t.Fatalf("qemu-img reads the built VMDK as %s, the raw disk is %s", ref, want)
	}
	os.Remove(raw)
	st, _ := os.Stat(vmdk)
	srv := httpserver.Start(t, dir)
	// The small cache puts most grain tables and the footer far ahead of
	// the window when the reader opens the image.
	for _, cache := range []int64{16 << 20, 6 << 20} {
		t.Run(fmt.Sprintf("cache%dMiB", cache>>20), func(t *testing.T) {
			srv.ResetStats()
			o := testOptions()
			o.CacheSize = cache
			o.BlockSize = 256 << 10
			s := mustOpen(t, srv.URL+"/disk.vmdk", o)
			if got := streamOptimizedSHA256(t, s, s.Size()); got != want {
				t.Fatalf("virtual disk sha256 %s, want %s", got, want)
			}
			d := mustComplete(t, s)
			logEngine(t, s)
			if d.SHA256 != fileSHA(t, vmdk) {
				t.Fatal("bad file digest")
			}
			ratio := float64(srv.BytesServed()) / float64(st.Size())
			t.Logf("file %d bytes, served %d (%.4f), %d requests", st.Size(), srv.BytesServed(), ratio, srv.Requests())
			checkOnce(t, srv.BytesServed(), st.Size(), o.BlockSize)
		})
	}
}
