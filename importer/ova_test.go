package importer

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hikube/ferry/internal/testutil"
)

func makeOVA(t *testing.T, dir string) (ova string, disks map[string][]byte) {
	t.Helper()
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	writeFile(t, filepath.Join(src, "vm.ovf"), "<Envelope/>")
	_, d1 := randomFile(t, src, "vm-disk1.vmdk", 1<<20+100, 1)
	_, d2 := randomFile(t, src, "vm-disk2.vmdk", 2<<20+3, 2)
	writeFile(t, filepath.Join(src, "vm.mf"), "SHA256(vm-disk1.vmdk)= "+sha256Hex(d1)+"\n")
	ova = filepath.Join(dir, "vm.ova")
	testutil.Run(t, "tar", "-cf", ova, "-C", src, "vm.ovf", "vm-disk1.vmdk", "vm-disk2.vmdk", "vm.mf")
	return ova, map[string][]byte{"vm-disk1.vmdk": d1, "vm-disk2.vmdk": d2}
}

func TestListOVA(t *testing.T) {
	dir := t.TempDir()
	ova, disks := makeOVA(t, dir)
	f, _ := os.Open(ova)
	defer f.Close()
	st, _ := f.Stat()
	list, err := ListOVA(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "vm-disk1.vmdk" || list[1].Name != "vm-disk2.vmdk" {
		t.Fatalf("%+v", list)
	}
	for _, d := range list {
		b := make([]byte, d.Size)
		f.ReadAt(b, d.Offset)
		if !bytes.Equal(b, disks[d.Name]) {
			t.Fatalf("%s: wrong bytes at %d", d.Name, d.Offset)
		}
	}
	if _, err := ChooseOVADisk(list, ""); err == nil || !strings.Contains(err.Error(), "vm-disk1.vmdk, vm-disk2.vmdk") {
		t.Fatalf("ambiguous: %v", err)
	}
	if d, err := ChooseOVADisk(list, "vm-disk2.vmdk"); err != nil || d.Name != "vm-disk2.vmdk" {
		t.Fatal(d, err)
	}
	if _, err := ChooseOVADisk(list, "nope"); err == nil {
		t.Fatal("unknown disk chosen")
	}
	if d, err := ChooseOVADisk(list[:1], ""); err != nil || d.Name != "vm-disk1.vmdk" {
		t.Fatal(d, err)
	}
	// Truncated archive.
	if _, err := ListOVA(f, list[1].Offset+100); err == nil {
		t.Fatal("truncated OVA listed")
	}
	// Not a tar.
	if _, err := ListOVA(bytes.NewReader(make([]byte, 4096)), 4096); err == nil {
		t.Fatal("zeros listed")
	}
}

func FuzzListOVA(f *testing.F) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "a.ovf", Size: 3, Mode: 0o644, Typeflag: tar.TypeReg})
	tw.Write([]byte("abc"))
	tw.WriteHeader(&tar.Header{Name: "disk.vmdk", Size: 700, Mode: 0o644, Typeflag: tar.TypeReg, Format: tar.FormatPAX, PAXRecords: map[string]string{"comment": "x"}})
	tw.Write(make([]byte, 700))
	tw.Close()
	f.Add(buf.Bytes())
	f.Add(buf.Bytes()[:1000])
	f.Add([]byte("ustar"))
	f.Fuzz(func(t *testing.T, data []byte) {
		disks, err := ListOVA(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		for _, d := range disks {
			if d.Offset < 0 || d.Size < 0 || d.Offset+d.Size > int64(len(data)) {
				t.Fatalf("disk %+v out of the %d-byte archive", d, len(data))
			}
		}
	})
}

func TestParseOVAManifest(t *testing.T) {
	sha1 := strings.Repeat("ab", 20)
	sha256 := strings.Repeat("cd", 32)
	sha512 := strings.Repeat("ef", 64)
	for _, c := range []struct {
		name, in string
		want     map[string]ManifestDigest
		err      string
	}{
		{"ovftool sha256", "SHA256(vm.ovf)= " + sha256 + "\nSHA256(vm-disk1.vmdk)= " + sha256 + "\n",
			map[string]ManifestDigest{"vm.ovf": {"sha256", sha256}, "vm-disk1.vmdk": {"sha256", sha256}}, ""},
		{"virtualbox sha1, CRLF", "SHA1 (vm.ovf)= " + sha1 + "\r\nSHA1(disk.vmdk)= " + strings.ToUpper(sha1) + "\r\n",
			map[string]ManifestDigest{"disk.vmdk": {"sha1", sha1}, "vm.ovf": {"sha1", sha1}}, ""},
		{"strongest wins", "SHA1(d.vmdk)= " + sha1 + "\nSHA512(d.vmdk)= " + sha512 + "\n",
			map[string]ManifestDigest{"d.vmdk": {"sha512", sha512}}, ""},
		{"./ prefix", "SHA256(./d.vmdk)= " + sha256, map[string]ManifestDigest{"d.vmdk": {"sha256", sha256}}, ""},
		{"md5 refused", "MD5(d.vmdk)= " + strings.Repeat("a", 32), nil, "unsupported digest"},
		{"wrong length", "SHA256(d.vmdk)= " + sha1, nil, "not SHA256 hex"},
		{"not hex", "SHA1(d.vmdk)= " + strings.Repeat("zz", 20), nil, "not SHA1 hex"},
		{"garbage", "hello\n", nil, "want ALG(NAME)= HEX"},
		{"conflict", "SHA1(d)= " + sha1 + "\nSHA1(d)= " + strings.Repeat("00", 20), nil, "two SHA1 digests"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseOVAManifest([]byte(c.in))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("%v, want %v", got, c.want)
			}
			for k, v := range c.want {
				if got[k] != v {
					t.Fatalf("%s: %v, want %v", k, got[k], v)
				}
			}
		})
	}
	if _, err := ParseOVAManifest(make([]byte, MaxOVAManifest+1)); err == nil {
		t.Fatal("huge manifest parsed")
	}
}

func FuzzOVAManifest(f *testing.F) {
	f.Add([]byte("SHA256(vm-disk1.vmdk)= " + strings.Repeat("0", 64) + "\n"))
	f.Add([]byte("SHA1 (a)= " + strings.Repeat("f", 40)))
	f.Add([]byte("SHA512(x)=\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseOVAManifest(b)
		if err != nil {
			return
		}
		for name, d := range m {
			if hexLen[d.Alg] != len(d.Hex) || !isHex(d.Hex) || d.Hex != strings.ToLower(d.Hex) {
				t.Fatalf("%s: bad digest %+v", name, d)
			}
		}
	})
}

func TestScanOVAManifest(t *testing.T) {
	dir := t.TempDir()
	ova, _ := makeOVA(t, dir)
	f, _ := os.Open(ova)
	defer f.Close()
	st, _ := f.Stat()
	disks, mf, err := ScanOVA(f, st.Size())
	if err != nil || len(disks) != 2 || mf == nil || mf.Name != "vm.mf" {
		t.Fatalf("disks %v manifest %v: %v", disks, mf, err)
	}
	b := make([]byte, mf.Size)
	f.ReadAt(b, mf.Offset)
	if !strings.HasPrefix(string(b), "SHA256(vm-disk1.vmdk)= ") {
		t.Fatalf("manifest bytes %q", b)
	}
}
