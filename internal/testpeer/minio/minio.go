// Package minio runs a real MinIO server on 127.0.0.1 for tests: the S3
// peer. The binary is found in $FERRY_TOOLS/bin (default: <repo
// root>/.cache/tools/bin) or PATH; scripts/install-tools.sh installs it.
// A missing binary fails the test under CI=true and skips it otherwise.
package minio

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Server is a running MinIO.
type Server struct {
	// Endpoint is "127.0.0.1:PORT"; URL is "http://127.0.0.1:PORT".
	Endpoint, URL        string
	AccessKey, SecretKey string
	Dir                  string
	Client               *minio.Client
}

// Binary returns the path of the minio binary, or "" and the reason.
func Binary() (string, string) {
	dir := os.Getenv("FERRY_TOOLS")
	if dir == "" {
		if root := repoRoot(); root != "" {
			dir = filepath.Join(root, ".cache", "tools")
		}
	}
	if dir != "" {
		p := filepath.Join(dir, "bin", "minio")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, ""
		}
	}
	if p, err := exec.LookPath("minio"); err == nil {
		return p, ""
	}
	return "", fmt.Sprintf("minio not found in %s/bin nor PATH: run scripts/install-tools.sh", dir)
}

func repoRoot() string {
	wd, err := os.Getwd()
	if err != nil {
		return ""
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Start runs MinIO with its data in a temporary directory until the test
// ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, why := Binary()
	if bin == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
	s := &Server{AccessKey: "ferrytest", SecretKey: "ferrytest-secret-key", Dir: t.TempDir()}
	var lastErr error
	// A port picked free may be taken before MinIO binds it: try again.
	for attempt := 0; attempt < 3; attempt++ {
		port, cport := freePort(t), freePort(t)
		s.Endpoint = "127.0.0.1:" + strconv.Itoa(port)
		s.URL = "http://" + s.Endpoint
		var out lockedBuffer
		cmd := exec.Command(bin, "server", "--quiet", "--address", s.Endpoint, "--console-address", "127.0.0.1:"+strconv.Itoa(cport), s.Dir)
		cmd.Env = append(os.Environ(),
			"MINIO_ROOT_USER="+s.AccessKey,
			"MINIO_ROOT_PASSWORD="+s.SecretKey,
			"MINIO_BROWSER=off",
			"MINIO_UPDATE=off",
			"CI=on", // MinIO: do not complain about the console
		)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatalf("start minio: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		stop := func() {
			cmd.Process.Signal(os.Interrupt)
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		}
		if err := waitReady(s.URL, exited); err != nil {
			stop()
			lastErr = fmt.Errorf("%v\n%s", err, out.String())
			continue
		}
		t.Cleanup(stop)
		c, err := minio.New(s.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), Secure: false})
		if err != nil {
			t.Fatal(err)
		}
		s.Client = c
		// Live is not ready: the S3 API answers "Server not initialized"
		// for a moment after.
		deadline := time.Now().Add(30 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := c.ListBuckets(ctx)
			cancel()
			if err == nil {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("minio S3 API not ready: %v\n%s", err, out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Fatalf("minio did not start: %v", lastErr)
	return nil
}

func waitReady(url string, exited <-chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("minio exited: %v", err)
		default:
		}
		resp, err := client.Get(url + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("minio not ready after 30 s")
}

// lockedBuffer collects a process's output while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Put creates bucket (if needed) and uploads the file at path as key.
func (s *Server) Put(t testing.TB, bucket, key, path string) {
	t.Helper()
	ctx := context.Background()
	ok, err := s.Client.BucketExists(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		if err := s.Client.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Client.FPutObject(ctx, bucket, key, path, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
}
