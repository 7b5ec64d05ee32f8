package importer

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hikube/ferry/internal/testpeer/httpserver"
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

// An OVA over HTTP: the chosen disk is read in place, the whole archive
// hashed.
func TestOpenImageOVA(t *testing.T) {
	dir := t.TempDir()
	ova, disks := makeOVA(t, dir)
	whole, _ := os.ReadFile(ova)
	srv := httpserver.Start(t, dir)
	o := testOptions()
	o.Checksum = "sha256:" + sha256Hex(whole)
	if _, err := OpenImage(context.Background(), srv.URL+"/vm.ova", o); err == nil || !strings.Contains(err.Error(), "--disk") {
		t.Fatalf("no disk chosen: %v", err)
	}
	o.Disk = "vm-disk2.vmdk"
	s, err := OpenImage(context.Background(), srv.URL+"/vm.ova", o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !strings.HasSuffix(s.Name(), "/vm.ova/vm-disk2.vmdk") || s.Size() != int64(len(disks["vm-disk2.vmdk"])) {
		t.Fatalf("%s %d", s.Name(), s.Size())
	}
	got := make([]byte, s.Size()+10)
	n, _ := s.ReadAt(got, 0)
	equalBytes(t, got[:n], disks["vm-disk2.vmdk"])
	d, err := s.Complete(context.Background())
	if err != nil || d.SHA256 != sha256Hex(whole) {
		t.Fatalf("%+v %v", d, err)
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
