package importer

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hikube/ferry/internal/testpeer/minio"
)

// s3Options points at the MinIO peer.
func s3Options(m *minio.Server) Options {
	o := testOptions()
	o.S3 = S3Options{Endpoint: m.URL, AccessKey: m.AccessKey, SecretKey: m.SecretKey, PathStyle: true, Region: "us-east-1"}
	return o
}

func TestS3(t *testing.T) {
	m := minio.Start(t)
	dir := t.TempDir()
	p, data := randomFile(t, dir, "disk.img", 9<<20+333, 21)
	m.Put(t, "images", "dir/disk.img", p)
	src := "s3://images/dir/disk.img"

	t.Run("parallel ranged reads", func(t *testing.T) {
		o := s3Options(m)
		o.Checksum = "sha256:" + sha256Hex(data)
		d, got, err := openReadComplete(src, o)
		if err != nil {
			t.Fatal(err)
		}
		equalBytes(t, got, data)
		if d.Checksum != o.Checksum || d.BytesFetched != int64(len(data)) {
			t.Fatalf("%+v", d)
		}
		// One stat and one GET per block: each byte once.
		if want := int64(1 + (len(data)+int(o.BlockSize)-1)/int(o.BlockSize)); d.Requests != want {
			t.Fatalf("%d requests, want %d", d.Requests, want)
		}
	})
	t.Run("random reads", func(t *testing.T) {
		s := mustOpen(t, src, s3Options(m))
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 30 {
					off := int64((g*7919 + i*104729) % len(data))
					buf := make([]byte, min(300000, len(data)-int(off)))
					if _, err := s.ReadAt(buf, off); err != nil || string(buf) != string(data[off:off+int64(len(buf))]) {
						t.Errorf("ReadAt %d: %v", off, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if d := mustComplete(t, s); d.SHA256 != sha256Hex(data) {
			t.Fatal("digest")
		}
	})
	t.Run("env credentials", func(t *testing.T) {
		t.Setenv("AWS_ACCESS_KEY_ID", m.AccessKey)
		t.Setenv("AWS_SECRET_ACCESS_KEY", m.SecretKey)
		t.Setenv("AWS_ENDPOINT_URL", m.URL)
		t.Setenv("AWS_REGION", "us-east-1")
		o := testOptions()
		o.S3.PathStyle = true
		s := mustOpen(t, src, o)
		if d := mustComplete(t, s); d.SHA256 != sha256Hex(data) {
			t.Fatal("digest")
		}
	})
	t.Run("missing key", func(t *testing.T) {
		_, err := Open(context.Background(), "s3://images/nope.img", s3Options(m))
		if err == nil || !strings.Contains(err.Error(), "stat s3://images/nope.img: 404 Not Found (NoSuchKey)") {
			t.Fatalf("%v", err)
		}
	})
	t.Run("bad credentials", func(t *testing.T) {
		o := s3Options(m)
		o.S3.SecretKey = "wrong-secret"
		start := time.Now()
		_, err := Open(context.Background(), src, o)
		if err == nil || !strings.Contains(err.Error(), "403 Forbidden") || strings.Contains(err.Error(), "wrong-secret") {
			t.Fatalf("%v", err)
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("403 was retried")
		}
	})
	t.Run("anonymous refused", func(t *testing.T) {
		o := testOptions()
		o.S3 = S3Options{Endpoint: m.URL, PathStyle: true}
		t.Setenv("AWS_ACCESS_KEY_ID", "")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "")
		if _, err := Open(context.Background(), src, o); err == nil || !strings.Contains(err.Error(), "403") {
			t.Fatalf("%v", err)
		}
	})
	t.Run("checksum mismatch", func(t *testing.T) {
		o := s3Options(m)
		o.Checksum = "md5:" + strings.Repeat("0", 32)
		_, _, err := openReadComplete(src, o)
		var ce *ChecksumError
		if !errors.As(err, &ce) || ce.Source != src {
			t.Fatalf("%v", err)
		}
	})
	t.Run("object replaced mid-import", func(t *testing.T) {
		p2, _ := randomFile(t, dir, "other.img", len(data), 22)
		m.Put(t, "images", "changing.img", p)
		o := s3Options(m)
		// A small cache: read-ahead stops well before the end.
		o.CacheSize = int64(o.Connections+2) * o.BlockSize
		s := mustOpen(t, "s3://images/changing.img", o)
		buf := make([]byte, 1<<20)
		if _, err := s.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
		m.Put(t, "images", "changing.img", p2)
		_, err := s.Complete(context.Background())
		if !errors.Is(err, ErrSourceChanged) || !strings.Contains(err.Error(), "412") {
			t.Fatalf("%v", err)
		}
	})
	t.Run("sums file on S3", func(t *testing.T) {
		sums := dir + "/SHA256SUMS"
		writeFile(t, sums, sha256Hex(data)+"  disk.img\n")
		m.Put(t, "images", "dir/SHA256SUMS", sums)
		o := s3Options(m)
		o.ChecksumURL = "s3://images/dir/SHA256SUMS"
		d, _, err := openReadComplete(src, o)
		if err != nil || d.Checksum != "sha256:"+sha256Hex(data) {
			t.Fatalf("%+v %v", d, err)
		}
	})
	t.Run("stream", func(t *testing.T) {
		st, err := OpenStream(context.Background(), src, s3Options(m))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		got := readAll(t, st)
		equalBytes(t, got, data)
	})
}
