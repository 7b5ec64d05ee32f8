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
	base, err := importer.Open(ctx, src, o.Fetch)
	if err != nil {
		return nil, err
	}
	in := &Input{Name: base.Name(), verify: base.Complete, closers: []io.Closer{base}}
	if err := in.open(ctx, src, base, o); err != nil {
		in.Close()
		return nil, err
	}
	return in, nil
}

func (in *Input) open(ctx context.Context, src string, base importer.Source, o InputOptions) error {
	var member importer.Source = base
	h, err := readHead(base, 512)
	if err != nil {
		return fmt.Errorf("read %s: %w", in.Name, err)
	}
	if importer.IsTar(h) {
		disks, err := importer.ListOVA(base, base.Size())
		if err != nil {
			return fmt.Errorf("%s: %w", in.Name, err)
		}
		in.Disks = disks
		d, err := importer.ChooseOVADisk(disks, o.Fetch.Disk)
		if err != nil {
			return fmt.Errorf("%s: %w", in.Name, err)
		}
		in.Member = d.Name
		member = importer.OVADiskSource(base, d)
		if h, err = readHead(member, 512); err != nil {
			return fmt.Errorf("read %s: %w", member.Name(), err)
		}
	}
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
	sp, err := importer.Spool(ctx, br, o.Fetch.Scratch)
	if err != nil {
		return fmt.Errorf("spool %s to %s: %w", in.Name, o.Fetch.Scratch, err)
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
