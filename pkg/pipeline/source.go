package pipeline

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/hikube/ferry/converter"
	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/converter/iso"
	"github.com/hikube/ferry/converter/raw"
	"github.com/hikube/ferry/converter/vmdk"
	"github.com/hikube/ferry/importer"
)

// InputOptions say how a source is fetched and opened.
type InputOptions struct {
	// Fetch configures the importer (connections, retries, checksum,
	// auth, S3, scratch, OVA disk, progress of fetched bytes).
	Fetch importer.Options
	// Format skips detection of the image format.
	Format string
	// AllowDir is where references may be followed. Default: a local
	// source's directory; remote and streamed sources follow none.
	AllowDir string
}

// Input is a source opened for conversion, either at random (Image) or as
// an in-order stream (stdin, compressed wrappers).
type Input struct {
	// Name is the source, redacted of secrets.
	Name string
	// Type is the image format.
	Type format.Type
	// Wrapper is the compression around the image, if any.
	Wrapper importer.Wrapper
	// Member is the OVA disk converted, if the source is an OVA; Disks
	// lists all of the archive's disks.
	Member string
	Disks  []importer.OVADisk
	// Manifest is the OVA's manifest member, if any; ManifestChecksum the
	// member's digest it gives ("alg:hex"), verified by Verify; empty
	// when the manifest does not list the disk.
	Manifest         string
	ManifestChecksum string
	// Image is set for random access; nil for a stream.
	Image format.Image

	stream  *bufio.Reader
	verify  func(context.Context) (importer.Digests, error)
	closers []io.Closer
}

// Streamed reports whether the image is converted from a stream (its
// virtual size is known only once the stream reveals it).
func (in *Input) Streamed() bool { return in.Image == nil }

// VirtualSize is the image's virtual size, -1 for a stream.
func (in *Input) VirtualSize() int64 {
	if in.Image == nil {
		return -1
	}
	return in.Image.Size()
}

// Convert runs the engine for a random-access image, the one-pass
// converter for a stream.
func (in *Input) Convert(ctx context.Context, o converter.Options) (*converter.Result, error) {
	if in.Image != nil {
		return converter.Convert(ctx, in.Image, o)
	}
	return converter.ConvertStream(ctx, in.stream, in.Type, o)
}

// Verify completes the source's digest (fetching what the converter did
// not read) and checks the expected checksum. Call it after Convert and
// before presenting the output as complete.
func (in *Input) Verify(ctx context.Context) (importer.Digests, error) {
	return in.verify(ctx)
}

// Close releases the image and the source.
func (in *Input) Close() error {
	var err error
	if in.Image != nil {
		err = in.Image.Close()
	}
	for i := len(in.closers) - 1; i >= 0; i-- {
		if e := in.closers[i].Close(); err == nil {
			err = e
		}
	}
	return err
}

func isLocal(src string) bool {
	return src != "-" && (!strings.Contains(src, "://") || strings.HasPrefix(strings.ToLower(src), "file://"))
}

// OpenInput opens src (a path, file://, http(s)://, s3://, or - for stdin)
// and unwraps what lies around the image: an OVA archive, a compression
// wrapper. Random-access formats in a stream need Fetch.Scratch.
func OpenInput(ctx context.Context, src string, o InputOptions) (*Input, error) {
	if err := o.Fetch.Validate(); err != nil {
		return nil, err
	}
	if src == "-" {
		st, err := importer.OpenStream(ctx, src, o.Fetch)
		if err != nil {
			return nil, err
		}
		in := &Input{Name: "stdin", verify: st.Complete, closers: []io.Closer{st}}
		if err := in.openStream(ctx, st, o); err != nil {
			in.Close()
			return nil, err
		}
		return in, nil
	}
	// Hashing waits until the OVA member to digest, if any, is known.
	fo := o.Fetch
	fo.HoldHash = true
	base, err := importer.Open(ctx, src, fo)
	if err != nil {
		return nil, err
	}
	in := &Input{Name: base.Name(), verify: base.Complete, closers: []io.Closer{base}}
	err = in.open(ctx, src, base, o)
	startHash(base)
	if err != nil {
		in.Close()
		return nil, err
	}
	return in, nil
}

func startHash(s importer.Source) {
	if rd, ok := s.(importer.RangeDigester); ok {
		rd.StartHash()
	}
}

func (in *Input) open(ctx context.Context, src string, base importer.Source, o InputOptions) error {
	var member importer.Source = base
	h, err := readHead(base, 512)
	if err != nil {
		return fmt.Errorf("read %s: %w", in.Name, err)
	}
	if importer.IsTar(h) {
		disks, mf, err := importer.ScanOVA(base, base.Size())
		if err != nil {
			return fmt.Errorf("%s: %w", in.Name, err)
		}
		in.Disks = disks
		d, err := importer.ChooseOVADisk(disks, o.Fetch.Disk)
		if err != nil {
			return fmt.Errorf("%s: %w", in.Name, err)
		}
		in.Member = d.Name
		if mf != nil {
			if err := in.checkManifest(base, *mf, d); err != nil {
				return fmt.Errorf("%s: %w", in.Name, err)
			}
		}
		member = importer.OVADiskSource(base, d)
		if h, err = readHead(member, 512); err != nil {
			return fmt.Errorf("read %s: %w", member.Name(), err)
		}
	}
	startHash(base)
	if w := importer.SniffWrapper(h); w != importer.None {
		// Read in order: the remote engine fetches and hashes ahead.
		return in.openStream(ctx, io.NewSectionReader(member, 0, member.Size()), o)
	}
	co := converter.OpenOptions{Format: format.Type(o.Format), AllowDir: o.AllowDir}
	switch {
	case co.AllowDir != "":
	case isLocal(src) && in.Member == "":
		p := strings.TrimPrefix(src, "file://")
		if abs, err := filepath.Abs(p); err == nil {
			co.AllowDir = filepath.Dir(abs)
		}
	default:
		// Nothing a remote image or an OVA member names is followed.
		co.NoReferences = true
	}
	img, err := converter.Open(member, co)
	if err != nil {
		return fmt.Errorf("open %s: %w", member.Name(), err)
	}
	in.Image, in.Type = img, img.Type()
	return nil
}

// checkManifest reads the OVA's manifest and has the source digest disk
// d as it hashes the archive; Verify then compares. A manifest that does
// not list the disk verifies nothing (ManifestChecksum stays empty).
func (in *Input) checkManifest(base importer.Source, mf, d importer.OVADisk) error {
	in.Manifest = mf.Name
	if mf.Size > importer.MaxOVAManifest {
		return fmt.Errorf("ova manifest %s: %d bytes, more than %d", mf.Name, mf.Size, importer.MaxOVAManifest)
	}
	data := make([]byte, mf.Size)
	// Small reads: the source hashes nothing yet, so its read-ahead
	// cannot move; reads this size go around it.
	for at := int64(0); at < mf.Size; at += 64 << 10 {
		end := min(at+64<<10, mf.Size)
		if _, err := base.ReadAt(data[at:end], mf.Offset+at); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read ova manifest %s: %w", mf.Name, err)
		}
	}
	sums, err := importer.ParseOVAManifest(data)
	if err != nil {
		return fmt.Errorf("%s: %w", mf.Name, err)
	}
	want, ok := sums[d.Name]
	if !ok {
		return nil
	}
	rd, ok := base.(importer.RangeDigester)
	if !ok {
		return nil
	}
	sum, err := rd.DigestRange(d.Offset, d.Size, want.Alg)
	if err != nil {
		return err
	}
	complete := in.verify
	in.verify = func(ctx context.Context) (importer.Digests, error) {
		dg, err := complete(ctx)
		if err != nil {
			return dg, err
		}
		got, err := sum()
		if err != nil {
			return dg, err
		}
		if got != want.Hex {
			return dg, &importer.ChecksumError{Alg: want.Alg, Expected: want.Hex, Actual: got,
				Source: fmt.Sprintf("%s/%s (per the archive's manifest %s)", in.Name, d.Name, mf.Name)}
		}
		in.ManifestChecksum = want.Alg + ":" + want.Hex
		return dg, nil
	}
	return nil
}

// openStream unwraps and detects an in-order source; formats that need
// random access are spooled to Fetch.Scratch, or refused.
func (in *Input) openStream(ctx context.Context, r io.Reader, o InputOptions) error {
	br := bufio.NewReaderSize(r, 1<<20)
	head, _ := br.Peek(importer.SniffLen)
	if w := importer.SniffWrapper(head); w != importer.None {
		zr, err := importer.Decompress(br, w)
		if err != nil {
			return fmt.Errorf("%s: %w", in.Name, err)
		}
		in.closers = append(in.closers, zr)
		in.Wrapper = w
		br = bufio.NewReaderSize(zr, 1<<20)
	}
	t := format.Type(o.Format)
	if t == "" {
		var err error
		if t, err = converter.DetectStream(br); err != nil {
			return fmt.Errorf("read %s: %w", in.Name, err)
		}
	}
	if t == "vhd" {
		t = "vpc"
	}
	if streamable(br, t) {
		in.stream, in.Type = br, t
		return nil
	}
	what := fmt.Sprintf("%s image read as a stream", t)
	if in.Wrapper != importer.None {
		what = fmt.Sprintf("%s image inside %s", t, in.Wrapper)
	}
	if o.Fetch.Scratch == "" {
		return fmt.Errorf("%s: %s needs random access: pass --scratch DIR to spool it to disk: %w", in.Name, what, converter.ErrNeedsRandomAccess)
	}
	sp, err := importer.Spool(ctx, br, o.Fetch.Scratch, in.Name)
	if err != nil {
		return err
	}
	in.closers = append(in.closers, sp)
	img, err := converter.Open(sp, converter.OpenOptions{Format: t, NoReferences: true})
	if err != nil {
		return fmt.Errorf("open %s: %w", in.Name, err)
	}
	in.Image, in.Type = img, img.Type()
	return nil
}

// streamable tells whether format t converts in one pass: raw, iso, and
// VMDKs whose header says streamOptimized (compressed grains in markers).
func streamable(br *bufio.Reader, t format.Type) bool {
	switch t {
	case raw.Type, iso.Type:
		return true
	case vmdk.Type:
		h, err := br.Peek(80)
		if err != nil || string(h[:4]) != "KDMV" {
			return false
		}
		flags := binary.LittleEndian.Uint32(h[8:])
		compression := binary.LittleEndian.Uint16(h[77:])
		return flags&(1<<16) != 0 && flags&(1<<17) != 0 && compression == 1
	}
	return false
}

func readHead(r io.ReaderAt, n int) ([]byte, error) {
	b := make([]byte, n)
	m, err := r.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b[:m], nil
}
