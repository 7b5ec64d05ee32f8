package uploader

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Store is the local image store (--store DIR): NAME.raw, a sparse RAW
// image, and NAME.json, its record. The record is written (atomically)
// only after the RAW is complete and renamed into place, so a record
// always describes a whole image; a RAW without a record is not an
// entry.
type Store struct {
	Dir string
}

// DefaultStoreDir is $XDG_DATA_HOME/ferry/images, else
// ~/.local/share/ferry/images.
func DefaultStoreDir() (string, error) {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "ferry", "images"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("image store: no home directory: %w (pass --store DIR)", err)
	}
	return filepath.Join(home, ".local", "share", "ferry", "images"), nil
}

// StoreRecord is NAME.json.
type StoreRecord struct {
	Name           string    `json:"name"`
	Source         string    `json:"source,omitempty"`
	SourceSHA256   string    `json:"source_sha256,omitempty"`
	Format         string    `json:"format,omitempty"`
	VirtualSize    int64     `json:"virtual_size"`
	AllocatedBytes int64     `json:"allocated_bytes,omitempty"`
	RawSHA256      string    `json:"raw_sha256,omitempty"`
	Created        time.Time `json:"created"`
	// Path of the RAW image (filled in by Get and List, not stored).
	Path string `json:"-"`
}

// ValidStoreName: a plain file name, no separators, not hidden.
func ValidStoreName(name string) error {
	if name == "" || len(name) > 200 || name[0] == '.' || name[0] == '-' {
		return fmt.Errorf("image name %q: must be 1-200 characters, not starting with . or -", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("image name %q: only letters, digits, '.', '_' and '-'", name)
		}
	}
	return nil
}

// StoreEntry is an image being written into the store.
type StoreEntry struct {
	*File
	store *Store
	name  string
}

// Create starts writing NAME (replacing an existing one only on Commit).
func (s *Store) Create(name string, size int64, o FileOptions) (*StoreEntry, error) {
	if err := ValidStoreName(name); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("image store %s: %w", s.Dir, err)
	}
	f, err := CreateFile(s.rawPath(name), size, o)
	if err != nil {
		return nil, fmt.Errorf("image store %s: %w", s.Dir, err)
	}
	return &StoreEntry{File: f, store: s, name: name}, nil
}

func (s *Store) rawPath(name string) string  { return filepath.Join(s.Dir, name+".raw") }
func (s *Store) jsonPath(name string) string { return filepath.Join(s.Dir, name+".json") }

// Commit makes the RAW final, then writes the record. An older record of
// the same name goes first, so it never describes the new RAW.
func (e *StoreEntry) Commit(rec StoreRecord) error {
	s := e.store
	if err := os.Remove(s.jsonPath(e.name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		e.File.Abort()
		return fmt.Errorf("image store: %w", err)
	}
	if err := e.File.Commit(); err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	rec.Name = e.name
	if rec.Created.IsZero() {
		rec.Created = time.Now().UTC()
	}
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.jsonPath(e.name) + ".tmp"
	if err := writeSync(tmp, append(b, '\n')); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("image store: %w", err)
	}
	if err := os.Rename(tmp, s.jsonPath(e.name)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("image store: %w", err)
	}
	if d, err := os.Open(s.Dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

func writeSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Get reads NAME's record; fs.ErrNotExist when there is none.
func (s *Store) Get(name string) (*StoreRecord, error) {
	if err := ValidStoreName(name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(s.jsonPath(name))
	if err != nil {
		return nil, err
	}
	rec := &StoreRecord{}
	if err := json.Unmarshal(b, rec); err != nil {
		return nil, fmt.Errorf("image store record %s: %w", s.jsonPath(name), err)
	}
	rec.Path = s.rawPath(name)
	if _, err := os.Stat(rec.Path); err != nil {
		return nil, fmt.Errorf("image store: record %s without its image: %w", name, err)
	}
	return rec, nil
}

// List returns the store's complete entries, by name.
func (s *Store) List() ([]StoreRecord, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []StoreRecord
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || ValidStoreName(name) != nil {
			continue
		}
		if rec, err := s.Get(name); err == nil {
			out = append(out, *rec)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
