package importer

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// OVADisk is a disk file inside an OVA archive: its bytes are
// [Offset, Offset+Size) of the archive.
type OVADisk struct {
	Name         string
	Offset, Size int64
}

// IsTar tells whether head (at least 262 bytes) starts a tar archive
// (ustar or GNU magic), as OVA files are.
func IsTar(head []byte) bool {
	return len(head) >= 262 && bytes.Equal(head[257:262], []byte("ustar"))
}

// notDisk lists the OVA members that are not disks.
var notDisk = map[string]bool{".ovf": true, ".mf": true, ".cert": true, ".nvram": true, ".xml": true, ".txt": true, ".json": true}

// maxOVAEntries bounds the members listed (an OVA has a handful).
const maxOVAEntries = 10000

// ListOVA lists the disks of an OVA (a tar archive): regular members other
// than the descriptor (.ovf), manifest (.mf), certificate and NVRAM. Only
// the tar headers are read; a disk is then read in place as a section of
// the archive. Sparse members are refused (their bytes are not in place).
func ListOVA(r io.ReaderAt, size int64) ([]OVADisk, error) {
	sr := io.NewSectionReader(r, 0, size)
	tr := tar.NewReader(sr)
	var disks []OVADisk
	for i := 0; ; i++ {
		if i >= maxOVAEntries {
			return nil, fmt.Errorf("ova: more than %d members", maxOVAEntries)
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("ova: member %d: %w", i+1, err)
		}
		// archive/tar reads whole 512-byte header blocks and seeks over
		// data, so the position now is where the member's data starts.
		pos, err := sr.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, fmt.Errorf("ova: %w", err)
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeRegA:
		case tar.TypeGNUSparse:
			return nil, fmt.Errorf("ova: member %s is a sparse file: unsupported", name)
		default:
			continue
		}
		for k := range hdr.PAXRecords {
			if strings.HasPrefix(k, "GNU.sparse.") {
				return nil, fmt.Errorf("ova: member %s is a sparse file: unsupported", name)
			}
		}
		if hdr.Size < 0 || pos+hdr.Size > size {
			return nil, fmt.Errorf("ova: member %s (%d bytes at %d) runs past the end of the archive (%d bytes)", name, hdr.Size, pos, size)
		}
		if notDisk[strings.ToLower(path.Ext(name))] {
			continue
		}
		disks = append(disks, OVADisk{Name: name, Offset: pos, Size: hdr.Size})
	}
	if len(disks) == 0 {
		return nil, errors.New("ova: no disk found in the archive")
	}
	return disks, nil
}

// ChooseOVADisk picks the disk named name (exact member name or base
// name), or the only disk when name is empty.
func ChooseOVADisk(disks []OVADisk, name string) (OVADisk, error) {
	names := make([]string, len(disks))
	for i, d := range disks {
		names[i] = d.Name
	}
	if name == "" {
		if len(disks) == 1 {
			return disks[0], nil
		}
		return OVADisk{}, fmt.Errorf("ova: %d disks (%s): choose one with --disk NAME", len(disks), strings.Join(names, ", "))
	}
	for _, d := range disks {
		if d.Name == name {
			return d, nil
		}
	}
	var found []OVADisk
	for _, d := range disks {
		if path.Base(d.Name) == name {
			found = append(found, d)
		}
	}
	if len(found) == 1 {
		return found[0], nil
	}
	return OVADisk{}, fmt.Errorf("ova: no disk named %q (disks: %s)", name, strings.Join(names, ", "))
}

// sectionSource is a part of a source (an OVA member). Complete and Close
// act on the whole source: the archive's checksum covers it all.
type sectionSource struct {
	parent    Source
	off, size int64
	name      string
}

// OVADiskSource returns disk d of the OVA src as a Source. Closing it
// closes src; Complete hashes all of src and checks its checksum.
func OVADiskSource(src Source, d OVADisk) Source {
	return &sectionSource{parent: src, off: d.Offset, size: d.Size, name: src.Name() + "/" + d.Name}
}

func (s *sectionSource) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read %s: negative offset", s.name)
	}
	if off >= s.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	short := int64(len(p)) > s.size-off
	if short {
		p = p[:s.size-off]
	}
	n, err := s.parent.ReadAt(p, s.off+off)
	if err == nil && short {
		err = io.EOF
	}
	return n, err
}

func (s *sectionSource) Name() string { return s.name }
func (s *sectionSource) Size() int64  { return s.size }
func (s *sectionSource) Close() error { return s.parent.Close() }
func (s *sectionSource) Complete(ctx context.Context) (Digests, error) {
	return s.parent.Complete(ctx)
}
