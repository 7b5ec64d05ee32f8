package importer

import (
	"context"
	"fmt"
	"io"
)

// OpenImage opens src for conversion and unwraps what lies around the
// image: an OVA archive (the disk o.Disk names, or its only disk) and a
// compression wrapper (gzip, xz, zstd, bzip2), both detected by content.
// A compressed image, and stdin, are not random-access: they are
// decompressed to o.Scratch, and without one OpenImage fails with
// ErrNeedScratch (a caller that can convert in order may then use
// OpenStream and Decompress instead). Complete verifies src as published
// (the compressed file, the whole OVA).
func OpenImage(ctx context.Context, src string, o Options) (Source, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	kind, _, err := classify(src)
	if err != nil {
		return nil, err
	}
	if kind == kindStdin {
		return openStdinImage(ctx, src, o)
	}
	base, err := Open(ctx, src, o)
	if err != nil {
		return nil, err
	}
	img, err := unwrap(ctx, base, o)
	if err != nil {
		base.Close()
		return nil, err
	}
	return img, nil
}

// head reads up to n bytes at the start of s.
func head(s Source, n int64) ([]byte, error) {
	b := make([]byte, min(n, s.Size()))
	if _, err := s.ReadAt(b, 0); err != nil && err != io.EOF {
		return nil, err
	}
	return b, nil
}

func unwrap(ctx context.Context, base Source, o Options) (Source, error) {
	img := base
	h, err := head(img, 512)
	if err != nil {
		return nil, err
	}
	if IsTar(h) {
		disks, err := ListOVA(img, img.Size())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", img.Name(), err)
		}
		d, err := ChooseOVADisk(disks, o.Disk)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", img.Name(), err)
		}
		img = OVADiskSource(img, d)
		if h, err = head(img, 512); err != nil {
			return nil, err
		}
	}
	w := SniffWrapper(h)
	if w == None {
		return img, nil
	}
	if o.Scratch == "" {
		return nil, fmt.Errorf("%s is %s-compressed: %w", img.Name(), w, ErrNeedScratch)
	}
	zr, err := Decompress(io.NewSectionReader(img, 0, img.Size()), w)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", img.Name(), err)
	}
	defer zr.Close()
	sp, err := spool(ctx, zr, o.Scratch, img.Name(), -1)
	if err != nil {
		return nil, fmt.Errorf("decompress %s (%s): %w", img.Name(), w, err)
	}
	return &layered{Source: sp, base: base}, nil
}

// layered is an image spooled from a base source: reads go to the spool,
// Complete and Close to both.
type layered struct {
	Source
	base Source
}

func (l *layered) Complete(ctx context.Context) (Digests, error) { return l.base.Complete(ctx) }
func (l *layered) Close() error {
	err := l.Source.Close()
	if err2 := l.base.Close(); err == nil {
		err = err2
	}
	return err
}

// openStdinImage spools stdin (decompressed if wrapped) to o.Scratch.
func openStdinImage(ctx context.Context, src string, o Options) (Source, error) {
	if o.Scratch == "" {
		return nil, fmt.Errorf("source -: stdin is not random-access: %w", ErrNeedScratch)
	}
	st, err := OpenStream(ctx, src, o)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	br := newPeekReader(st, SniffLen)
	var r io.Reader = br
	if w := SniffWrapper(br.head); w != None {
		zr, err := Decompress(br, w)
		if err != nil {
			return nil, fmt.Errorf("stdin: %w", err)
		}
		defer zr.Close()
		r = zr
	}
	sp, err := spool(ctx, r, o.Scratch, "stdin", -1)
	if err != nil {
		return nil, err
	}
	// The whole stream is read now (or a decompressor stopped early:
	// Complete drains the rest); its verdict is the Source's.
	d, verr := st.Complete(ctx)
	sp.complete = func(context.Context) (Digests, error) { return d, verr }
	img, err := unwrap(ctx, sp, Options{Disk: o.Disk, Scratch: o.Scratch})
	if err != nil {
		sp.Close()
		return nil, err
	}
	return img, nil
}

// peekReader keeps the first bytes of a stream to sniff them, then
// replays them.
type peekReader struct {
	r    io.Reader
	head []byte
	off  int
}

func newPeekReader(r io.Reader, n int) *peekReader {
	b := make([]byte, n)
	m, _ := io.ReadFull(r, b)
	return &peekReader{r: r, head: b[:m]}
}

func (p *peekReader) Read(b []byte) (int, error) {
	if p.off < len(p.head) {
		n := copy(b, p.head[p.off:])
		p.off += n
		return n, nil
	}
	return p.r.Read(b)
}
