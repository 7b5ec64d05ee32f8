package uploader_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hikube/ferry/internal/testpeer/minio"
	"github.com/hikube/ferry/uploader"
	minioapi "github.com/minio/minio-go/v7"
)

func TestS3Upload(t *testing.T) {
	srv := minio.Start(t)
	ctx := ctxT(t)
	if err := srv.Client.MakeBucket(ctx, "images", minioapi.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		size     int
		partSize int64
		threads  int
	}{
		{name: "one-part", size: 3<<20 + 17},
		{name: "parallel-parts", size: 23<<20 + 4095, partSize: 5 << 20, threads: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, sum := testImage(tt.size)
			prog := &counter{}
			var opens atomic.Int32
			tgt, err := uploader.NewS3Target(uploader.S3Options{
				Bucket: "images", Key: "debian/" + tt.name + ".raw",
				Endpoint: srv.URL, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey,
				PartSize: tt.partSize, Threads: tt.threads, Progress: prog,
			})
			if err != nil {
				t.Fatal(err)
			}
			im := rawImage(img, &opens)
			im.SourceSHA256 = strings.Repeat("ef", 32)
			res, err := tgt.Upload(ctx, im)
			if err != nil {
				t.Fatal(err)
			}
			if res.RawSHA256 != sum || res.Size != int64(len(img)) || opens.Load() != 1 || prog.n.Load() != int64(len(img)) {
				t.Errorf("result %+v opens %d progress %d", res, opens.Load(), prog.n.Load())
			}
			st, err := srv.Client.StatObject(ctx, "images", "debian/"+tt.name+".raw", minioapi.StatObjectOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if st.UserMetadata["Sha256"] != sum || st.UserMetadata["Ferry-Source-Sha256"] != im.SourceSHA256 || st.Size != int64(len(img)) {
				t.Errorf("object metadata %v size %d", st.UserMetadata, st.Size)
			}
			obj, err := srv.Client.GetObject(ctx, "images", "debian/"+tt.name+".raw", minioapi.GetObjectOptions{})
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(obj)
			if err != nil || !bytes.Equal(got, img) {
				t.Fatalf("object content differs (%v)", err)
			}
		})
	}
	t.Run("verification-fails", func(t *testing.T) {
		img, _ := testImage(12 << 20)
		tgt, err := uploader.NewS3Target(uploader.S3Options{Bucket: "images", Key: "bad.raw", Endpoint: srv.URL, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PartSize: 5 << 20})
		if err != nil {
			t.Fatal(err)
		}
		im := rawImage(img, nil)
		im.Open = func(ctx context.Context) (io.ReadCloser, error) {
			return io.NopCloser(&failAtEOF{r: bytes.NewReader(img), err: errors.New("checksum mismatch")}), nil
		}
		if _, err := tgt.Upload(ctx, im); err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
			t.Fatalf("error %v", err)
		}
		if _, err := srv.Client.StatObject(ctx, "images", "bad.raw", minioapi.StatObjectOptions{}); err == nil {
			t.Fatal("object of a failed verification exists")
		}
	})
	t.Run("bad-credentials", func(t *testing.T) {
		img, _ := testImage(1 << 20)
		tgt, err := uploader.NewS3Target(uploader.S3Options{Bucket: "images", Key: "x.raw", Endpoint: srv.URL, AccessKey: srv.AccessKey, SecretKey: "wrong-secret-key"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = tgt.Upload(ctx, rawImage(img, nil))
		if err == nil || !strings.HasPrefix(err.Error(), "upload s3://images/x.raw: ") || strings.Contains(err.Error(), "wrong-secret-key") {
			t.Fatalf("error %v", err)
		}
	})
}

func TestParseS3URL(t *testing.T) {
	tests := []struct {
		in, bucket, key string
		ok              bool
	}{
		{"s3://b/k.raw", "b", "k.raw", true},
		{"s3://b/dir/k.raw", "b", "dir/k.raw", true},
		{"s3://b/", "", "", false},
		{"s3://b", "", "", false},
		{"s3://b/dir/", "", "", false},
		{"http://b/k", "", "", false},
	}
	for _, tt := range tests {
		b, k, err := uploader.ParseS3URL(tt.in)
		if (err == nil) != tt.ok || b != tt.bucket || k != tt.key {
			t.Errorf("ParseS3URL(%q) = %q %q %v", tt.in, b, k, err)
		}
	}
}
