package iso

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/internal/testutil"
)

func TestProbeAndLabel(t *testing.T) {
	testutil.Need(t, "genisoimage")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "user-data"), []byte("#cloud-config\n"), 0o644)
	iso := filepath.Join(t.TempDir(), "cidata.iso")
	testutil.Run(t, "genisoimage", "-quiet", "-output", iso, "-volid", "cidata", "-joliet", "-rock", dir)
	f, err := format.OpenFile(iso)
	if err != nil {
		t.Fatal(err)
	}
	if !Probe(f, f.Size()) {
		t.Fatal("ISO not detected")
	}
	img, err := Open(f, format.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if info := img.Info(); info.Label != "cidata" || info.Format != Type || info.VirtualSize != f.Size() {
		t.Fatalf("info %+v", info)
	}
}

func TestProbeRejects(t *testing.T) {
	for name, b := range map[string][]byte{
		"short":        make([]byte, 1000),
		"zeros":        make([]byte, 64<<10),
		"cd001-offset": append(make([]byte, 32768+2), []byte("CD001\x01")...),
	} {
		if Probe(bytes.NewReader(b), int64(len(b))) {
			t.Errorf("%s detected as ISO", name)
		}
	}
}

// FuzzLabel: go-diskfs is not hardened; Label must survive any bytes.
func FuzzLabel(f *testing.F) {
	if _, err := exec.LookPath("genisoimage"); err == nil {
		dir := f.TempDir()
		os.WriteFile(filepath.Join(dir, "a"), []byte("x"), 0o644)
		out := filepath.Join(f.TempDir(), "s.iso")
		if exec.Command("genisoimage", "-quiet", "-o", out, "-V", "SEED", dir).Run() == nil {
			if b, err := os.ReadFile(out); err == nil {
				f.Add(b)
			}
		}
	}
	pvd := make([]byte, 40<<10)
	copy(pvd[32768:], "\x01CD001\x01")
	f.Add(pvd)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		if Probe(r, int64(len(data))) {
			Label(r, int64(len(data)))
		}
	})
}
