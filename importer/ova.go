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
	disks, _, err := ScanOVA(r, size)
	return disks, err
}

// ScanOVA is ListOVA that also returns the manifest member (the first
// .mf), or nil when the archive has none.
func ScanOVA(r io.ReaderAt, size int64) (disks []OVADisk, manifest *OVADisk, err error) {
	sr := io.NewSectionReader(r, 0, size)
	tr := tar.NewReader(sr)
	for i := 0; ; i++ {
		if i >= maxOVAEntries {
			return nil, nil, fmt.Errorf("ova: more than %d members", maxOVAEntries)
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("ova: member %d: %w", i+1, err)
		}
		// archive/tar reads whole 512-byte header blocks and seeks over
		// data, so the position now is where the member's data starts.
		pos, err := sr.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, nil, fmt.Errorf("ova: %w", err)
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeRegA:
		case tar.TypeGNUSparse:
			return nil, nil, fmt.Errorf("ova: member %s is a sparse file: unsupported", name)
		default:
			continue
		}
		for k := range hdr.PAXRecords {
			if strings.HasPrefix(k, "GNU.sparse.") {
				return nil, nil, fmt.Errorf("ova: member %s is a sparse file: unsupported", name)
			}
		}
		if hdr.Size < 0 || pos+hdr.Size > size {
			return nil, nil, fmt.Errorf("ova: member %s (%d bytes at %d) runs past the end of the archive (%d bytes)", name, hdr.Size, pos, size)
		}
		ext := strings.ToLower(path.Ext(name))
		if ext == ".mf" && manifest == nil {
			manifest = &OVADisk{Name: name, Offset: pos, Size: hdr.Size}
		}
		if notDisk[ext] {
			continue
		}
		disks = append(disks, OVADisk{Name: name, Offset: pos, Size: hdr.Size})
	}
	if len(disks) == 0 {
		return nil, nil, errors.New("ova: no disk found in the archive")
	}
	return disks, manifest, nil
}

// MaxOVAManifest bounds the manifest read: a few lines per member.
const MaxOVAManifest = 1 << 20

// ManifestDigest is a manifest's digest of one member.
type ManifestDigest struct {
	Alg string // sha1, sha256 or sha512
	Hex string // lower-case
}

// ParseOVAManifest parses an OVF manifest: lines "ALG(NAME)= HEX" with
// ALG SHA1, SHA256 or SHA512 (what ovftool and VirtualBox write). It
// returns the digests by member name; a malformed line is an error, not
// skipped, since the manifest is what proves the disk intact.
func ParseOVAManifest(data []byte) (map[string]ManifestDigest, error) {
	if len(data) > MaxOVAManifest {
		return nil, fmt.Errorf("ova manifest: %d bytes, more than %d", len(data), MaxOVAManifest)
	}
	out := map[string]ManifestDigest{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		open := strings.IndexByte(line, '(')
		end := strings.LastIndex(line, ")=")
		if open <= 0 || end < open {
			return nil, fmt.Errorf("ova manifest: line %d: want ALG(NAME)= HEX", i+1)
		}
		alg := strings.ToLower(strings.TrimSpace(line[:open]))
		name := path.Clean(strings.TrimPrefix(line[open+1:end], "./"))
		sum := strings.ToLower(strings.TrimSpace(line[end+2:]))
		ALG := strings.ToUpper(alg)
		if alg != "sha1" && alg != "sha256" && alg != "sha512" {
			return nil, fmt.Errorf("ova manifest: line %d: unsupported digest %q (want SHA1, SHA256 or SHA512)", i+1, ALG)
		}
		if algForHexLen(len(sum)) != alg || !isHex(sum) {
			return nil, fmt.Errorf("ova manifest: line %d: %s digest of %s is not %s hex", i+1, ALG, name, ALG)
		}
		if prev, ok := out[name]; ok && prev.Alg == alg && prev.Hex != sum {
			return nil, fmt.Errorf("ova manifest: line %d: two %s digests for %s", i+1, ALG, name)
		}
		// With several algorithms for one member, the strongest wins.
		if prev, ok := out[name]; !ok || algRank(alg) > algRank(prev.Alg) {
			out[name] = ManifestDigest{Alg: alg, Hex: sum}
		}
	}
	return out, nil
}

func algRank(alg string) int { return map[string]int{"sha1": 1, "sha256": 2, "sha512": 3}[alg] }

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

// RangeDigester is implemented by the sources Open returns (local files,
// HTTP, S3): the digest of a range (an OVA member, to check against the
// archive's manifest) is computed along with the source's own.
type RangeDigester interface {
	// DigestRange arranges for the alg digest of [off, off+n); sum
	// returns it (hex) once Complete has returned.
	DigestRange(off, n int64, alg string) (sum func() (string, error), err error)
	// StartHash ends Options.HoldHash.
	StartHash()
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
