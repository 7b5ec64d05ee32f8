package vmdk

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"

	"github.com/hikube/ferry/converter/format"
)

const (
	// maxSpan bounds one read of compressed grains.
	maxSpan = 8 << 20
	// maxGap is how far apart two compressed grains may be and still be
	// read together: streams put a grain table (2.5 KiB) after every 512
	// grains, and reading through it beats a second read.
	maxGap = 64 << 10
	// markerSize is the grain marker before compressed data: lba u64, size u32.
	markerSize = 12
)

var (
	spanPool  = sync.Pool{New: func() any { return new([]byte) }}
	grainPool = sync.Pool{New: func() any { return new([]byte) }}
)

// getBuf returns a pooled buffer of length n.
func getBuf(pool *sync.Pool, n int) *[]byte {
	bp := pool.Get().(*[]byte)
	if cap(*bp) < n {
		*bp = make([]byte, n)
	}
	*bp = (*bp)[:n]
	return bp
}

// readCompressed fills the compressed-grain segments of p. Grains close to
// one another in the file (in a stream they follow one another) are read
// with one ReadAt, then inflated straight into p when a segment covers a
// whole grain.
func (s *sparse) readCompressed(p []byte, segs []seg) error {
	if !slices.IsSortedFunc(segs, byHost) {
		slices.SortStableFunc(segs, byHost)
	}
	for i := 0; i < len(segs); {
		start := segs[i].host
		if start >= s.fileSize {
			return format.Corruptf("vmdk %s: compressed grain for offset %d is at %d, beyond the end of the file (%d bytes)", s.name, segs[i].gv, start, s.fileSize)
		}
		end := start + s.compSpan(start, segs[i].hint)
		j := i + 1
		for ; j < len(segs); j++ {
			h := segs[j].host
			if h > end+maxGap || h >= s.fileSize {
				break
			}
			e := max(end, h+s.compSpan(h, segs[j].hint))
			if e-start > maxSpan {
				break
			}
			end = e
		}
		bp := getBuf(&spanPool, int(end-start))
		err := readFull(s.f, *bp, start)
		if err != nil {
			err = fmt.Errorf("vmdk %s: read compressed grains at %d: %w", s.name, start, err)
		}
		for k := i; k < j && err == nil; k++ {
			err = s.decodeGrain(p, &segs[k], (*bp)[segs[k].host-start:])
		}
		spanPool.Put(bp)
		if err != nil {
			return err
		}
		i = j
	}
	return nil
}

func byHost(a, b seg) int { return cmp.Compare(a.host, b.host) }

// decodeGrain inflates the grain of x into p. buf holds the file from the
// grain (marker) on, possibly less than the whole grain.
func (s *sparse) decodeGrain(p []byte, x *seg, buf []byte) error {
	data, err := s.grainData(x.host, buf)
	if err != nil {
		return err
	}
	valid := s.validLen(x.gv)
	dst := p[x.off : x.off+x.n]
	if x.in == 0 && int64(x.n) == valid {
		err = inflateGrain(dst, int(s.grainSize), data)
	} else {
		gb := getBuf(&grainPool, int(valid))
		if err = inflateGrain(*gb, int(s.grainSize), data); err == nil {
			copy(dst, (*gb)[x.in:])
		}
		grainPool.Put(gb)
	}
	if err != nil {
		return fmt.Errorf("vmdk %s: grain at virtual offset %d (file offset %d): %w", s.name, x.gv, x.host, err)
	}
	return nil
}

// grainData returns the compressed bytes of the grain at host, reading them
// on their own when buf (the shared read) stops short.
func (s *sparse) grainData(host int64, buf []byte) ([]byte, error) {
	if !s.markers {
		// No marker: the stream's own end delimits it (as in qemu).
		return buf[:min(int64(len(buf)), s.maxCompressed())], nil
	}
	if len(buf) < markerSize {
		if host+markerSize > s.fileSize {
			return nil, format.Corruptf("vmdk %s: grain marker at %d is cut by the end of the file", s.name, host)
		}
		buf = make([]byte, markerSize)
		if err := readFull(s.f, buf, host); err != nil {
			return nil, fmt.Errorf("vmdk %s: read grain marker at %d: %w", s.name, host, err)
		}
	}
	size := int64(binary.LittleEndian.Uint32(buf[8:12]))
	if size == 0 || size > s.maxCompressed() {
		return nil, format.Corruptf("vmdk %s: grain marker at %d declares %d compressed bytes (want 1 to %d)", s.name, host, size, s.maxCompressed())
	}
	need := markerSize + size
	if need > int64(len(buf)) {
		if host+need > s.fileSize {
			return nil, format.Corruptf("vmdk %s: compressed grain at %d (%d bytes) is cut by the end of the file (%d bytes)", s.name, host, need, s.fileSize)
		}
		buf = make([]byte, need)
		if err := readFull(s.f, buf, host); err != nil {
			return nil, fmt.Errorf("vmdk %s: read compressed grain at %d: %w", s.name, host, err)
		}
	}
	return buf[markerSize:need], nil
}
