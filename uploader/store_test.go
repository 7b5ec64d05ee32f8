package uploader_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/hikube/ferry/uploader"
)

func TestStore(t *testing.T) {
	s := &uploader.Store{Dir: filepath.Join(t.TempDir(), "images")}
	write := func(name string, data []byte, commit bool) error {
		e, err := s.Create(name, int64(len(data)), uploader.FileOptions{NoDirect: true})
		if err != nil {
			return err
		}
		if _, err := e.WriteAt(data, 0); err != nil {
			return err
		}
		if !commit {
			return e.Abort()
		}
		return e.Commit(uploader.StoreRecord{Source: "https://example.com/" + name + ".qcow2", VirtualSize: int64(len(data)), RawSHA256: "x"})
	}
	if err := write("debian-12", []byte("first"), true); err != nil {
		t.Fatal(err)
	}
	if err := write("debian-12", []byte("second"), true); err != nil {
		t.Fatal(err)
	}
	if err := write("aborted", []byte("nope"), false); err != nil {
		t.Fatal(err)
	}
	rec, err := s.Get("debian-12")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(rec.Path)
	if !bytes.Equal(got, []byte("second")) || rec.VirtualSize != 6 || rec.Name != "debian-12" || rec.Created.IsZero() {
		t.Errorf("record %+v, image %q", rec, got)
	}
	if _, err := s.Get("aborted"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("aborted entry: %v", err)
	}
	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].Name != "debian-12" {
		t.Errorf("list %+v %v", list, err)
	}
	ents, _ := os.ReadDir(s.Dir)
	if len(ents) != 2 {
		t.Errorf("leftovers in the store: %v", ents)
	}
	for _, bad := range []string{"", ".hidden", "a/b", "../x", "-x", "a b"} {
		if _, err := s.Create(bad, 1, uploader.FileOptions{}); err == nil {
			t.Errorf("Create(%q) accepted", bad)
		}
	}
}

func TestDefaultStoreDir(t *testing.T) {
	tests := []struct {
		xdg, home, want string
	}{
		{"/data", "/home/u", "/data/ferry/images"},
		{"", "/home/u", "/home/u/.local/share/ferry/images"},
		{"relative", "/home/u", "/home/u/.local/share/ferry/images"}, // XDG says: ignore relative paths
	}
	for _, tt := range tests {
		t.Setenv("XDG_DATA_HOME", tt.xdg)
		t.Setenv("HOME", tt.home)
		got, err := uploader.DefaultStoreDir()
		if err != nil || got != tt.want {
			t.Errorf("xdg %q home %q: %q %v, want %q", tt.xdg, tt.home, got, err, tt.want)
		}
	}
}
