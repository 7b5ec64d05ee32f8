package vmdk

import (
	"hash/adler32"
	"math/rand"
	"testing"
)

func TestAdler32(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	buf := make([]byte, 200000)
	rng.Read(buf)
	ff := make([]byte, 100000)
	for i := range ff {
		ff[i] = 0xff // worst case for the lanes
	}
	for _, b := range [][]byte{buf, ff} {
		for _, n := range []int{0, 1, 7, 8, 9, 63, 5552, 32767, 32768, 32769, 65536, 65543, len(b)} {
			p := b[:min(n, len(b))]
			if got, want := adler32Update(1, p), adler32.Checksum(p); got != want {
				t.Fatalf("n=%d: %08x, want %08x", n, got, want)
			}
		}
	}
	// Chained updates in odd pieces equal one update.
	want := adler32.Checksum(buf)
	a := uint32(1)
	for p := buf; len(p) > 0; {
		n := min(len(p), 1+rng.Intn(40000))
		a = adler32Update(a, p[:n])
		p = p[n:]
	}
	if a != want {
		t.Fatalf("chained %08x, want %08x", a, want)
	}
}

func BenchmarkAdler32(b *testing.B) {
	buf := make([]byte, 64<<10)
	rand.New(rand.NewSource(1)).Read(buf)
	b.Run("vmdk", func(b *testing.B) {
		b.SetBytes(int64(len(buf)))
		for b.Loop() {
			adler32Update(1, buf)
		}
	})
	b.Run("stdlib", func(b *testing.B) {
		b.SetBytes(int64(len(buf)))
		for b.Loop() {
			adler32.Checksum(buf)
		}
	})
}
