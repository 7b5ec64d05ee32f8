package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// remoteSuite: ferry converting straight from a loopback HTTP server (and
// MinIO) vs (b) curl then qemu-img and (c) CDI's way, nbdkit-curl feeding
// qemu-img over NBD.
func remoteSuite(dir, ferry string, sel []variant, runs int, withS3 bool) {
	base, stopHTTP := startHTTP(dir)
	defer stopHTTP()

	var s3 *minioServer
	if withS3 {
		s3 = startMinio(dir)
		if s3 != nil {
			defer s3.stop()
		}
	}

	fmt.Printf("\nremote sources over loopback (median of %d; output flushed; checksum verified by ferry)\n", runs)
	fmt.Printf("%-12s %8s %9s %9s %7s %9s %7s %9s %8s %9s %8s %9s %7s %9s %7s\n", "format", "file", "(a)ferry", "(b)curl+", "a/b", "(c)nbdkit", "a/c", "fetched", "RSS", "s3 ferry", "s3/http", "(d)local", "d/c", "(e)sha256", "e/c")
	dst := filepath.Join(dir, "out.raw")
	dl := filepath.Join(dir, "download.tmp")
	for _, v := range sel {
		src := filepath.Join(dir, v.file)
		url := base + "/" + v.file
		warm(src)
		// (e): SHA-256 of the file alone, in memory: one serial pass that
		// no schedule of the other stages can shorten.
		var sum string
		e := median(runs, func() (time.Duration, int64) {
			t := time.Now()
			sum = fileSHA256(src)
			return time.Since(t), 0
		})
		var rss, fetched int64
		a := median(runs, func() (time.Duration, int64) {
			os.Remove(dst)
			http.Post(base+"/_reset", "", nil)
			d, r := timed(ferry, "convert", "-q", "--checksum", "sha256:"+sum, url, dst)
			rss = max(rss, r)
			fetched = served(base)
			return d, r
		})
		b := median(runs, func() (time.Duration, int64) {
			os.Remove(dst)
			os.Remove(dl)
			return timed("sh", "-c", fmt.Sprintf("curl -sf -o %q %q && qemu-img convert -f %s -O raw -m 16 -W %q %q && sync %q", dl, url, v.fmt, dl, dst, dst))
		})
		os.Remove(dl)
		c := median(runs, func() (time.Duration, int64) {
			os.Remove(dst)
			sock := filepath.Join(dir, "nbd.sock")
			os.Remove(sock)
			// As CDI's importer: nbdkit curl (readahead, retry filters), qemu-img convert from NBD.
			return timed("sh", "-c", fmt.Sprintf(
				"nbdkit -r -U %q --filter=readahead --filter=retry -P %q curl url=%q & "+
					"for i in $(seq 100); do [ -S %q ] && break; sleep 0.05; done; "+
					"qemu-img convert -f %s -O raw -t writeback 'nbd+unix:///?socket=%s' %q && sync %q; st=$?; kill $(cat %q) 2>/dev/null; exit $st",
				sock, sock+".pid", url, sock, v.fmt, sock, dst, dst, sock+".pid"))
		})
		s3col, ratio := "-", "-"
		if s3 != nil {
			key := v.file
			s3.put(key, src)
			s := median(runs, func() (time.Duration, int64) {
				os.Remove(dst)
				cmd := exec.Command(ferry, "convert", "-q", "--s3-endpoint", s3.url, "--s3-path-style", "--checksum", "sha256:"+sum, "s3://bench/"+key, dst)
				cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID="+s3.user, "AWS_SECRET_ACCESS_KEY="+s3.pass, "AWS_REGION=us-east-1")
				cmd.Stderr = os.Stderr
				t := time.Now()
				must(cmd.Run())
				return time.Since(t), 0
			})
			s3col, ratio = fmt.Sprintf("%.2fs", s.Seconds()), fmt.Sprintf("%.2f", s.Seconds()/a.Seconds())
		}
		// (d): the same conversion and checksum from the local file, no
		// network: what (a) cannot beat.
		d := median(runs, func() (time.Duration, int64) {
			os.Remove(dst)
			return timed(ferry, "convert", "-q", "--checksum", "sha256:"+sum, src, dst)
		})
		fmt.Printf("%-12s %8s %8.2fs %8.2fs %7.2f %8.2fs %7.2f %9s %8s %9s %8s %8.2fs %7.2f %8.2fs %7.2f\n", v.name, humanSize(fileSize(src)),
			a.Seconds(), b.Seconds(), a.Seconds()/b.Seconds(), c.Seconds(), a.Seconds()/c.Seconds(),
			fmt.Sprintf("%.3fx", float64(fetched)/float64(fileSize(src))), humanSize(rss*1024), s3col, ratio,
			d.Seconds(), d.Seconds()/c.Seconds(), e.Seconds(), e.Seconds()/c.Seconds())
		os.Remove(dst)
	}
	fmt.Println("\n(a) ferry convert URL --checksum; (b) curl download, then qemu-img convert -m 16 -W; (c) nbdkit curl + qemu-img convert (CDI's importer);")
	fmt.Println("(d) ferry convert FILE --checksum from the local file (no network: a floor for (a));")
	fmt.Println("(e) SHA-256 of the file alone, from the page cache, in Go (the serial pass inside (a) and (d): its floor)")
	fmt.Println("targets: a/b <= 0.70, a/c <= 0.33, fetched <= 1.01x, s3/http <= 1.20")
}

// startHTTP builds and starts ferry-testhttp serving dir; it returns the
// base URL and a stop function.
func startHTTP(dir string) (string, func()) {
	srv := exec.Command(buildTool(dir, "ferry-testhttp"), "-dir", dir, "-addr", fmt.Sprintf("127.0.0.1:%d", freePort()))
	srv.Stderr = io.Discard
	// must() exits without running defers: do not leave it serving.
	srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, _ := srv.StdoutPipe()
	must(srv.Start())
	base, err := bufio.NewReader(out).ReadString('\n')
	must(err)
	return strings.TrimSpace(base), func() { srv.Process.Kill(); srv.Wait() }
}

// buildTool builds ./internal/testpeer/cmd/NAME into DIR/bin.
func buildTool(dir, name string) string {
	bin := filepath.Join(dir, "bin", name)
	must(os.MkdirAll(filepath.Dir(bin), 0o755))
	run("go", "build", "-o", bin, "./internal/testpeer/cmd/"+name)
	return bin
}

func served(base string) int64 {
	resp, err := http.Get(base + "/_stats")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var st struct{ Bytes int64 }
	json.NewDecoder(resp.Body).Decode(&st)
	return st.Bytes
}

func fileSHA256(p string) string {
	f, err := os.Open(p)
	must(err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	must(err)
	return hex.EncodeToString(h.Sum(nil))
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type minioServer struct {
	cmd             *exec.Cmd
	url, user, pass string
	client          *minio.Client
}

// startMinio runs the MinIO the test setup installed; nil when absent.
func startMinio(dir string) *minioServer {
	tools := os.Getenv("FERRY_TOOLS")
	if tools == "" {
		tools = ".cache/tools"
	}
	bin := filepath.Join(tools, "bin", "minio")
	if _, err := os.Stat(bin); err != nil {
		logf("no MinIO at %s (make tools): skipping S3", bin)
		return nil
	}
	port, cport := freePort(), freePort()
	s := &minioServer{url: fmt.Sprintf("http://127.0.0.1:%d", port), user: "ferrybench", pass: "ferrybench-secret"}
	data := filepath.Join(dir, "minio")
	os.RemoveAll(data)
	s.cmd = exec.Command(bin, "server", "--quiet", "--address", fmt.Sprintf("127.0.0.1:%d", port), "--console-address", fmt.Sprintf("127.0.0.1:%d", cport), data)
	s.cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+s.user, "MINIO_ROOT_PASSWORD="+s.pass, "MINIO_BROWSER=off", "MINIO_UPDATE=off")
	must(s.cmd.Start())
	c, err := minio.New(fmt.Sprintf("127.0.0.1:%d", port), &minio.Options{Creds: credentials.NewStaticV4(s.user, s.pass, "")})
	must(err)
	s.client = c
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.MakeBucket(ctx, "bench", minio.MakeBucketOptions{})
		cancel()
		if err == nil {
			return s
		}
		if i > 100 {
			logf("minio not ready: %v", err)
			s.stop()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *minioServer) put(key, path string) {
	_, err := s.client.FPutObject(context.Background(), "bench", key, path, minio.PutObjectOptions{})
	must(err)
}

func (s *minioServer) stop() {
	s.cmd.Process.Signal(os.Interrupt)
	s.cmd.Wait()
	os.RemoveAll(filepath.Join(filepath.Dir(s.cmd.Args[len(s.cmd.Args)-1]), "minio"))
}
