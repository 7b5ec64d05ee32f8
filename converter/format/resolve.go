package format

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// DirResolver opens referenced files only inside one directory tree. It is
// built on os.Root, so symlinks that lead out of the tree are refused by the
// kernel-level walk, not by string checks alone.
type DirResolver struct {
	root *os.Root
	dir  string // absolute path of the allowed directory
}

// NewDirResolver allows references that resolve inside dir.
func NewDirResolver(dir string) (*DirResolver, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(abs)
	if err != nil {
		return nil, fmt.Errorf("open allowed directory: %w", err)
	}
	return &DirResolver{root: root, dir: abs}, nil
}

// Close releases the directory handle.
func (r *DirResolver) Close() error { return r.root.Close() }

// Dir is the allowed directory.
func (r *DirResolver) Dir() string { return r.dir }

// Open resolves ref relative to the directory of from and opens it, refusing
// absolute paths, escapes and symlinks leading out of the allowed directory.
func (r *DirResolver) Open(from, ref string) (File, error) {
	if ref == "" {
		return nil, fmt.Errorf("%w: empty file name", ErrUnsafeReference)
	}
	if strings.ContainsRune(ref, 0) {
		return nil, fmt.Errorf("%w: %q contains NUL", ErrUnsafeReference, ref)
	}
	if filepath.IsAbs(ref) || strings.HasPrefix(ref, `\\`) || (len(ref) > 1 && ref[1] == ':') {
		return nil, fmt.Errorf("%w: %q is an absolute path (only files inside %s are followed)", ErrUnsafeReference, ref, r.dir)
	}
	if strings.Contains(ref, "://") || strings.HasPrefix(ref, "json:") {
		return nil, fmt.Errorf("%w: %q is a protocol reference, not a file", ErrUnsafeReference, ref)
	}
	fromAbs, err := filepath.Abs(from)
	if err != nil {
		return nil, err
	}
	relDir, err := filepath.Rel(r.dir, filepath.Dir(fromAbs))
	if err != nil || relDir == ".." || strings.HasPrefix(relDir, "../") {
		return nil, fmt.Errorf("%w: %q: referring image %s is outside %s", ErrUnsafeReference, ref, from, r.dir)
	}
	rel := path.Clean(path.Join(filepath.ToSlash(relDir), filepath.ToSlash(ref)))
	if rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, fmt.Errorf("%w: %q escapes %s", ErrUnsafeReference, ref, r.dir)
	}
	f, err := r.root.Open(rel)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) && strings.Contains(pe.Err.Error(), "escapes") {
			return nil, fmt.Errorf("%w: %q leads outside %s (symlink)", ErrUnsafeReference, ref, r.dir)
		}
		return nil, fmt.Errorf("open %q (named by %s): %w", ref, from, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() && st.Mode()&fs.ModeDevice == 0 {
		f.Close()
		return nil, fmt.Errorf("%w: %q is not a regular file", ErrUnsafeReference, ref)
	}
	return &OSFile{File: f, name: filepath.Join(r.dir, filepath.FromSlash(rel)), size: st.Size()}, nil
}

// OSFile adapts *os.File to File.
type OSFile struct {
	*os.File
	name string
	size int64
}

// OpenFile opens a local file as a File.
func OpenFile(name string) (*OSFile, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	size := st.Size()
	if st.Mode()&fs.ModeDevice != 0 {
		// Block devices report size 0 in Stat; seek to the end instead.
		if n, err := f.Seek(0, 2); err == nil {
			size = n
		}
	}
	abs, _ := filepath.Abs(name)
	return &OSFile{File: f, name: abs, size: size}, nil
}

// NewFile wraps an already open file.
func NewFile(f *os.File, name string, size int64) *OSFile {
	return &OSFile{File: f, name: name, size: size}
}

// Name is the absolute path of the file.
func (f *OSFile) Name() string { return f.name }

// Size of the file in bytes.
func (f *OSFile) Size() int64 { return f.size }

// CheckChain refuses loops and absurd depths before a nested image is opened.
// name is the canonical name of the file about to be opened.
func (o Options) CheckChain(name string) error {
	if o.Depth >= MaxChainDepth {
		return fmt.Errorf("%w: chain deeper than %d images", ErrReferenceLoop, MaxChainDepth)
	}
	for _, c := range o.Chain {
		if c == name {
			return fmt.Errorf("%w: %s refers back to itself through its chain", ErrReferenceLoop, name)
		}
	}
	return nil
}

// Nested returns the options for an image named by the image called name.
func (o Options) Nested(name string) Options {
	n := o
	n.Depth = o.Depth + 1
	n.Chain = append(append([]string(nil), o.Chain...), name)
	return n
}
