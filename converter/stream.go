package converter

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/converter/iso"
	"github.com/hikube/ferry/converter/raw"
	"github.com/hikube/ferry/converter/vmdk"
)

// Streams: some inputs cannot be read at random (stdin, a gzip/xz/zstd
// wrapper, a pipe). raw, iso and streamOptimized VMDK convert from such a
// stream in one pass; anything else needs random access and the caller
// must spool it (pipeline's --scratch).

// ErrNeedsRandomAccess is returned by ConvertStream for formats that
// cannot be converted from a stream.
var ErrNeedsRandomAccess = errors.New("format needs random access")

// Sizer is told the virtual size as soon as the stream reveals it (for a
// raw stream: at the end). File targets use it to set their length.
type Sizer interface{ SetSize(int64) error }

// StreamHeadSize is how much of a stream DetectStream looks at.
const StreamHeadSize = 64 << 10

// DetectStream peeks at the head of a buffered stream and returns its
// format without consuming anything. Only formats recognisable from the
// head are found: a fixed VHD (footer at the end) streams as raw, as
// qemu-img reads it.
func DetectStream(br *bufio.Reader) (format.Type, error) {
	head, err := br.Peek(StreamHeadSize)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		return "", err
	}
	size := int64(1) << 62 // unknown: probes that need the end fail
	if errors.Is(err, io.EOF) {
		size = int64(len(head))
	}
	r := bytes.NewReader(head)
	for _, f := range Formats {
		if f.Type == raw.Type {
			break
		}
		if f.Probe(r, size) {
			return f.Type, nil
		}
	}
	return raw.Type, nil
}

// ConvertStream converts an in-order stream of format t (from
// DetectStream) to the targets in o. A WriterAt target must also be a
// Sizer when the size is not known up front.
func ConvertStream(ctx context.Context, br *bufio.Reader, t format.Type, o Options) (*Result, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	s := &seqSink{ctx: ctx, o: o, start: time.Now()}
	s.res.Format = t
	if o.Digest {
		s.hash = sha256.New()
	}
	switch t {
	case raw.Type, iso.Type:
		if err := s.copyRaw(br); err != nil {
			return nil, err
		}
		if err := s.setSize(s.off); err != nil {
			return nil, err
		}
	case vmdk.Type:
		err := vmdk.ReadStream(br, func(capacity int64) error {
			s.res.VirtualSize = capacity
			return s.setSize(capacity)
		}, func(off int64, data []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			s.res.AllocatedBytes += int64(len(data))
			return s.write(off, data)
		})
		if err != nil {
			if errors.Is(err, vmdk.ErrNotStreamOptimized) {
				// A sparse (not streamOptimized) VMDK: grains in any order.
				return nil, fmt.Errorf("%w: %v", ErrNeedsRandomAccess, err)
			}
			return nil, err
		}
		if err := s.zeros(s.res.VirtualSize - s.off); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%s: %w", t, ErrNeedsRandomAccess)
	}
	s.res.VirtualSize = s.off
	if s.hash != nil {
		s.res.RawSHA256 = hex.EncodeToString(s.hash.Sum(nil))
	}
	s.res.Duration = time.Since(s.start)
	return &s.res, nil
}

// seqSink writes an in-order image: data at increasing offsets, the gaps
// zeros.
type seqSink struct {
	ctx   context.Context
	o     Options
	off   int64 // next virtual offset
	hash  hash.Hash
	res   Result
	start time.Time
	buf   []byte
}

func (s *seqSink) setSize(n int64) error {
	if sz, ok := s.o.WriterAt.(Sizer); ok {
		return sz.SetSize(n)
	}
	return nil
}

func (s *seqSink) copyRaw(r io.Reader) error {
	if s.buf == nil {
		s.buf = alignedBlock(DefaultChunkSize)
	}
	for {
		if err := s.ctx.Err(); err != nil {
			return err
		}
		n, err := io.ReadFull(r, s.buf)
		if n > 0 {
			if werr := s.write(s.off, s.buf[:n]); werr != nil {
				return werr
			}
			s.res.AllocatedBytes += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read stream at %d: %w", s.off, err)
		}
	}
}

// write puts data at off (>= s.off), zeros first in the gap.
func (s *seqSink) write(off int64, data []byte) error {
	if off < s.off {
		return format.Corruptf("stream data at %d goes backwards (already at %d)", off, s.off)
	}
	if err := s.zeros(off - s.off); err != nil {
		return err
	}
	if s.hash != nil {
		s.hash.Write(data)
	}
	if s.o.Stream != nil {
		if _, err := s.o.Stream.Write(data); err != nil {
			return fmt.Errorf("write stream at %d: %w", off, err)
		}
		s.res.BytesWritten += int64(len(data))
	}
	if s.o.WriterAt != nil {
		n, err := writeData(s.o.WriterAt, data, off, s.o.WriteZeros)
		if err != nil {
			return fmt.Errorf("write %d+%d: %w", off, len(data), err)
		}
		s.res.BytesWritten += n
	}
	s.off = off + int64(len(data))
	if s.o.Progress != nil {
		s.o.Progress.Add(int64(len(data)))
	}
	return nil
}

func (s *seqSink) zeros(n int64) error {
	if n <= 0 {
		return nil
	}
	if s.o.WriterAt != nil && s.o.WriteZeros {
		w, err := writeZeros(s.o.WriterAt, s.off, n)
		if err != nil {
			return err
		}
		s.res.BytesWritten += w
	}
	for left := n; left > 0; {
		if err := s.ctx.Err(); err != nil {
			return err
		}
		m := min(left, int64(len(zeroChunk)))
		if s.hash != nil {
			s.hash.Write(zeroChunk[:m])
		}
		if s.o.Stream != nil {
			if _, err := s.o.Stream.Write(zeroChunk[:m]); err != nil {
				return fmt.Errorf("write stream at %d: %w", s.off+n-left, err)
			}
			s.res.BytesWritten += m
		}
		left -= m
	}
	s.off += n
	if s.o.Progress != nil {
		s.o.Progress.Add(n)
	}
	return nil
}
