package vhd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"unicode/utf16"

	"github.com/hikube/ferry/converter/format"
)

// Parent locator platform codes.
const (
	platW2ru = "W2ru" // Windows relative path, UTF-16LE
	platW2ku = "W2ku" // Windows absolute path, UTF-16LE
	platWi2r = "Wi2r" // deprecated relative path, bytes
	platWi2k = "Wi2k" // deprecated absolute path, bytes
	platMacX = "MacX" // file:// URL, UTF-8
	platMac  = "Mac " // Mac OS alias record: not a path, skipped
)

// maxLocatorBytes bounds one locator's data: a Windows path is at most
// 32767 UTF-16 units.
const maxLocatorBytes = 64 << 10

type candidate struct {
	from string // locator kind, for error messages
	ref  string // normalized reference, as given to the resolver
}

// parentCandidates lists the references to try, relative ones first.
func (img *Image) parentCandidates(hdr []byte) ([]candidate, error) {
	be := binary.BigEndian
	var rel, abs []candidate
	seen := map[string]bool{}
	add := func(list *[]candidate, from, raw string) {
		ref := normalizeRef(raw)
		if ref == "" || seen[ref] {
			return
		}
		seen[ref] = true
		*list = append(*list, candidate{from, ref})
	}
	for i := 0; i < 8; i++ {
		l := hdr[576+24*i : 576+24*(i+1)]
		code := string(l[0:4])
		if be.Uint32(l[0:4]) == 0 {
			continue
		}
		length := uint64(be.Uint32(l[8:12]))
		off := be.Uint64(l[16:24])
		if length == 0 || code == platMac {
			continue
		}
		if length > maxLocatorBytes || off > uint64(img.fileSize) || length > uint64(img.fileSize)-off {
			return nil, format.Corruptf("vpc: parent locator %d (%q): %d bytes at offset %d are beyond the end of the file (%d bytes) or too long", i, code, length, off, img.fileSize)
		}
		data := make([]byte, length)
		if err := readFull(img.f, data, int64(off)); err != nil {
			return nil, err
		}
		switch code {
		case platW2ru:
			add(&rel, code, decodeUTF16(data, binary.LittleEndian))
		case platWi2r:
			add(&rel, code, string(data))
		case platW2ku:
			add(&abs, code, decodeUTF16(data, binary.LittleEndian))
		case platWi2k:
			add(&abs, code, string(data))
		case platMacX:
			add(&abs, code, fileURLPath(string(data)))
		}
	}
	// The parent unicode name (UTF-16BE) is usually a bare file name:
	// tried after the relative locators, before the absolute ones.
	add(&rel, "parent name", img.parentName)
	return append(rel, abs...), nil
}

// normalizeRef turns a Windows-style reference into a slash path for the
// resolver: NULs end it, a leading ".\" goes, backslashes become slashes.
func normalizeRef(s string) string {
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, `.\`)
	return strings.ReplaceAll(s, `\`, "/")
}

func decodeUTF16(b []byte, order binary.ByteOrder) string {
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = order.Uint16(b[2*i:])
		if u[i] == 0 {
			u = u[:i]
			break
		}
	}
	return string(utf16.Decode(u))
}

// fileURLPath turns a MacX locator (file://localhost/path or file:///path)
// into its path; anything else is returned as is and the resolver refuses
// it.
func fileURLPath(s string) string {
	s = strings.TrimRight(s, "\x00")
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "file" || (u.Host != "" && u.Host != "localhost") {
		return s
	}
	return u.Path
}

// openParent finds and opens the parent of a differencing image through
// the confined resolver.
func (img *Image) openParent(hdr []byte, opts format.Options) (err error) {
	copy(img.parentUUID[:], hdr[40:56])
	img.parentName = decodeUTF16(hdr[64:576], binary.BigEndian)
	img.bitmaps = newBitmapCache(img.bitmapSize)
	cands, err := img.parentCandidates(hdr)
	if err != nil {
		return err
	}
	if len(cands) == 0 {
		return format.Corruptf("vpc: differencing image %s names no parent (no usable parent locator, empty parent name)", img.f.Name())
	}
	var names []string
	for _, c := range cands {
		names = append(names, fmt.Sprintf("%q", c.ref))
	}
	if opts.Resolver == nil || opts.Open == nil {
		return fmt.Errorf("%w: vpc: differencing image %s needs its parent (%s) and references are refused", format.ErrUnsafeReference, img.f.Name(), strings.Join(names, ", "))
	}
	var refused, failed []string
	var firstErr error
	nested := opts.Nested(img.f.Name())
	for _, c := range cands {
		pf, err := opts.Resolver.Open(img.f.Name(), c.ref)
		if err != nil {
			if errors.Is(err, format.ErrUnsafeReference) {
				refused = append(refused, fmt.Sprintf("%s %q", c.from, c.ref))
			} else {
				failed = append(failed, fmt.Sprintf("%s %q: %v", c.from, c.ref, err))
				if firstErr == nil {
					firstErr = err
				}
			}
			continue
		}
		// The nested options hold this image too: a parent that is the
		// child itself is a loop.
		if err := nested.CheckChain(pf.Name()); err != nil {
			pf.Close()
			return fmt.Errorf("vpc: parent %q of %s: %w", c.ref, img.f.Name(), err)
		}
		p, err := opts.Open(pf, "", nested)
		if err != nil {
			pf.Close()
			return fmt.Errorf("vpc: parent %q of %s: %w", c.ref, img.f.Name(), err)
		}
		// Virtual PC and Hyper-V record the parent's identity: a file
		// of the right name but another identity is not the parent.
		if pv, ok := p.(*Image); ok && img.parentUUID != ([16]byte{}) && pv.ft.uuid != img.parentUUID {
			p.Close()
			failed = append(failed, fmt.Sprintf("%s %q: its UUID %s is not the parent UUID %s", c.from, c.ref, formatUUID(pv.ft.uuid), formatUUID(img.parentUUID)))
			if firstErr == nil {
				firstErr = format.ErrCorrupt
			}
			continue
		}
		img.parent = p
		img.parentRef = c.ref
		return nil
	}
	if len(refused) > 0 {
		if len(failed) > 0 {
			return fmt.Errorf("%w: vpc: parent of %s: refused %s (only files inside the allowed directory are followed); also tried %s",
				format.ErrUnsafeReference, img.f.Name(), strings.Join(refused, ", "), strings.Join(failed, "; "))
		}
		return fmt.Errorf("%w: vpc: parent of %s: refused %s (only files inside the allowed directory are followed)",
			format.ErrUnsafeReference, img.f.Name(), strings.Join(refused, ", "))
	}
	return fmt.Errorf("vpc: parent of %s not found: tried %s: %w", img.f.Name(), strings.Join(failed, "; "), firstErr)
}

// bitmapCache keeps recently used sector bitmaps of a differencing image,
// direct-mapped by block number and bounded to about 4 MiB. Cached slices
// are never written after being stored, so readers use them unlocked.
type bitmapCache struct {
	mu    sync.Mutex
	slots []bitmapSlot
}

type bitmapSlot struct {
	block int64
	data  []byte
}

func newBitmapCache(bitmapSize int64) *bitmapCache {
	n := max(8, min(4096, (4<<20)/bitmapSize))
	return &bitmapCache{slots: make([]bitmapSlot, n)}
}

// bitmap returns the sector bitmap of block bi, stored at off.
func (img *Image) bitmap(bi, off int64) ([]byte, error) {
	c := img.bitmaps
	slot := &c.slots[bi%int64(len(c.slots))]
	c.mu.Lock()
	if slot.data != nil && slot.block == bi {
		d := slot.data
		c.mu.Unlock()
		return d, nil
	}
	c.mu.Unlock()
	d := make([]byte, img.bitmapSize)
	if err := readFull(img.f, d, off); err != nil {
		return nil, err
	}
	c.mu.Lock()
	slot.block, slot.data = bi, d
	c.mu.Unlock()
	return d, nil
}
