package importer

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"io"
	"math/rand"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hikube/ferry/internal/testpeer/httpserver"
	"github.com/hikube/ferry/pkg/progress"
)

// Random reads, concurrent, of odd sizes and offsets, including reads
// across block boundaries and past the end, return the file's bytes.
func TestReadAtExact(t *testing.T) {
	for _, size := range []int{0, 1, 1000, 256 << 10, 5<<20 + 12345} {
		t.Run("", func(t *testing.T) {
			_, url, data := serve(t, size)
			s := mustOpen(t, url, testOptions())
			if s.Size() != int64(size) {
				t.Fatalf("Size = %d, want %d", s.Size(), size)
			}
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewSource(int64(g)))
					for range 150 {
						off := rng.Int63n(int64(size) + 10)
						n := rng.Intn(700 << 10)
						if rng.Intn(3) == 0 {
							n = rng.Intn(5000)
						}
						buf := make([]byte, n)
						m, err := s.ReadAt(buf, off)
						want := 0
						if off < int64(size) {
							want = min(n, size-int(off))
						}
						if m != want {
							t.Errorf("ReadAt(%d, %d) = %d, %v; want %d bytes", n, off, m, err, want)
							return
						}
						if m < n && err != io.EOF {
							t.Errorf("ReadAt(%d, %d) short without EOF: %v", n, off, err)
							return
						}
						if m == n && err != nil {
							t.Errorf("ReadAt(%d, %d): %v", n, off, err)
							return
						}
						if m > 0 && string(buf[:m]) != string(data[off:off+int64(m)]) {
							t.Errorf("ReadAt(%d, %d): wrong bytes", n, off)
							return
						}
					}
				}()
			}
			wg.Wait()
			d := mustComplete(t, s)
			if d.SHA256 != sha256Hex(data) {
				t.Fatalf("SHA256 = %s, want %s", d.SHA256, sha256Hex(data))
			}
			s.Close()
			checkNoLeak(t)
		})
	}
}

// Reading the whole file in order the way the convert engine does fetches
// each byte once.
func TestInOrderEachByteOnce(t *testing.T) {
	srv, url, data := serve(t, 24<<20+777)
	o := testOptions()
	o.Checksum = "sha256:" + sha256Hex(data)
	o.Progress = &progress.Counter{}
	s := mustOpen(t, url, o)
	got := readAllInOrder(t, s, 4, 1<<20)
	equalBytes(t, got, data)
	d := mustComplete(t, s)
	if d.SHA256 != sha256Hex(data) || d.Checksum != o.Checksum {
		t.Fatalf("digests %+v", d)
	}
	if done, total := o.Progress.Load(); done != int64(len(data)) || total != int64(len(data)) {
		t.Fatalf("progress %d / %d", done, total)
	}
	ratio := float64(srv.BytesServed()) / float64(len(data))
	t.Logf("served %d bytes for %d (%.4f), %d requests", srv.BytesServed(), len(data), ratio, srv.Requests())
	checkOnce(t, srv.BytesServed(), int64(len(data)), o.BlockSize)
	if d.BytesFetched != srv.BytesServed() {
		t.Errorf("BytesFetched %d, server says %d", d.BytesFetched, srv.BytesServed())
	}
}

// Complete alone (the converter read nothing) fetches and hashes it all.
func TestCompleteWithoutReads(t *testing.T) {
	srv, url, data := serve(t, 3<<20+5)
	s := mustOpen(t, url, testOptions())
	d := mustComplete(t, s)
	if d.SHA256 != sha256Hex(data) {
		t.Fatal("bad digest")
	}
	if srv.BytesServed() != int64(len(data)) {
		t.Fatalf("served %d, want %d", srv.BytesServed(), len(data))
	}
	// Reads after Complete still work (re-fetching as needed).
	buf := make([]byte, 1000)
	if _, err := s.ReadAt(buf, 12345); err != nil || string(buf) != string(data[12345:13345]) {
		t.Fatalf("ReadAt after Complete: %v", err)
	}
}

// Bytes fetched again after they were hashed and evicted (a format reader
// going back to a table) are checked against the CRCs taken as they first
// arrived: unchanged, they are served; changed on a server that gives no
// validator to pin, the read fails instead of returning bytes the checksum
// never saw.
func TestRefetchChecked(t *testing.T) {
	const size = 12<<20 + 999
	for _, read := range []struct {
		name   string
		off, n int64
	}{
		{"small read", 700<<10 + 13, 4000},       // a few segments again
		{"large read", 1 << 20, 1<<20 + 512<<10}, // whole blocks again
	} {
		t.Run(read.name, func(t *testing.T) {
			srv, url, data := serve(t, size)
			srv.Fault("/disk.img", httpserver.Fault{NoValidators: true, IgnoreConditions: true})
			o := testOptions()
			o.CacheSize = 3 << 20 // six blocks: the first half is evicted by the end
			s := mustOpen(t, url, o)
			defer s.Close()
			equalBytes(t, readAllInOrder(t, s, 2, 1<<20), data)
			served := srv.BytesServed()

			buf := make([]byte, read.n)
			if _, err := s.ReadAt(buf, read.off); err != nil {
				t.Fatalf("read again: %v", err)
			}
			equalBytes(t, buf, data[read.off:read.off+read.n])
			if srv.BytesServed() == served {
				t.Fatal("nothing fetched again: the test does not exercise re-fetching")
			}

			srv.Fault("/disk.img", httpserver.Fault{Change: true})
			_, err := s.ReadAt(buf, read.off+2<<20)
			if !errors.Is(err, ErrSourceChanged) || !strings.Contains(err.Error(), "differ from when they were first read") {
				t.Fatalf("read of changed bytes: %v, want ErrSourceChanged", err)
			}
		})
	}
}

// Cancelling the context stops everything promptly.
func TestCancel(t *testing.T) {
	srv, url, _ := serve(t, 8<<20)
	srv.Fault("", faultSlow)
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Open(ctx, url, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Complete(context.Background())
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Complete after cancel: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Complete did not return after cancel")
	}
	if _, err := s.ReadAt(make([]byte, 10), 7<<20); !errors.Is(err, context.Canceled) {
		t.Fatalf("ReadAt after cancel: %v", err)
	}
	s.Close()
	checkNoLeak(t)
}

// Close while readers wait fails them with ErrClosed and leaks nothing.
func TestCloseWhileReading(t *testing.T) {
	srv, url, _ := serve(t, 8<<20)
	srv.Fault("", faultSlow)
	s, err := Open(context.Background(), url, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := s.ReadAt(make([]byte, 1<<20), 6<<20)
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	s.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) && !errors.Is(err, context.Canceled) {
			t.Fatalf("ReadAt after Close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("ReadAt did not return after Close")
	}
	checkNoLeak(t)
}

// Sources closed leave no connection (nor its goroutines) behind.
func TestNoConnectionLeak(t *testing.T) {
	_, url, _ := serve(t, 3<<20)
	conns := func() int {
		buf := make([]byte, 1<<20)
		return strings.Count(string(buf[:runtime.Stack(buf, true)]), "net/http.(*persistConn).readLoop")
	}
	before := conns()
	for range 5 {
		s := mustOpen(t, url, testOptions())
		s.ReadAt(make([]byte, 1000), 2<<20)
		s.Close()
	}
	deadline := time.Now().Add(2 * time.Second)
	for conns() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := conns(); n > before {
		t.Fatalf("%d connections left open (%d before)", n, before)
	}
	checkNoLeak(t)
}

// DigestRange, on every source kind that supports it: a range's digest
// comes out of the same pass as the file's, whatever the reads did
// meanwhile; with HoldHash, ranges near the start can be registered after
// reading the header; once hashed past, registering fails.
func TestDigestRange(t *testing.T) {
	const size = 6<<20 + 777
	dir := t.TempDir()
	local, data := randomFile(t, dir, "disk.img", size, 5)
	srv := httpserver.Start(t, dir)
	for _, src := range []string{srv.URL + "/disk.img", local} {
		t.Run(map[bool]string{true: "http", false: "local"}[strings.HasPrefix(src, "http")], func(t *testing.T) {
			o := testOptions()
			o.CacheSize = 3 << 20 // 6 blocks: half the file
			o.HoldHash = true
			o.Checksum = "sha256:" + sha256Hex(data)
			s := mustOpen(t, src, o)
			defer s.Close()
			rd, ok := s.(RangeDigester)
			if !ok {
				t.Fatalf("%T is not a RangeDigester", s)
			}
			head := make([]byte, 4096)
			if _, err := s.ReadAt(head, 0); err != nil {
				t.Fatal(err)
			}
			// Far ahead and small: served around the held window.
			if _, err := s.ReadAt(head, size-5000); err != nil {
				t.Fatal(err)
			}
			sums := map[[2]int64]func() (string, error){}
			for _, r := range [][2]int64{{512, 3 << 20}, {4<<20 + 1, size - 4<<20 - 1}, {0, 0}} {
				sum, err := rd.DigestRange(r[0], r[1], "sha1")
				if err != nil {
					t.Fatal(err)
				}
				sums[r] = sum
			}
			if _, err := rd.DigestRange(size-10, 11, "sha1"); err == nil {
				t.Fatal("range past the end accepted")
			}
			rd.StartHash()
			buf := make([]byte, 1<<20)
			for off := int64(size) - int64(len(buf)); off > 0; off -= 3 << 20 {
				s.ReadAt(buf, off)
			}
			if _, err := s.Complete(context.Background()); err != nil {
				t.Fatal(err)
			}
			for r, sum := range sums {
				got, err := sum()
				want := sha1.Sum(data[r[0] : r[0]+r[1]])
				if err != nil || got != hex.EncodeToString(want[:]) {
					t.Fatalf("range %v: %s, %v; want %x", r, got, err, want)
				}
			}
			if _, isRemote := s.(*remote); isRemote {
				// A large read beyond the held window ends the hold
				// rather than wait for a window that cannot move.
				o.Checksum = ""
				s2 := mustOpen(t, src, o)
				defer s2.Close()
				big := make([]byte, 1<<20)
				if _, err := s2.ReadAt(big, size-int64(len(big))); err != nil || !bytes.Equal(big, data[size-len(big):]) {
					t.Fatalf("far read under hold: %v", err)
				}
				mustComplete(t, s2)
				if _, err := rd.DigestRange(100, 10, "sha256"); err == nil || !strings.Contains(err.Error(), "already hashed past") {
					t.Fatalf("late range: %v", err)
				}
			}
		})
	}
}
