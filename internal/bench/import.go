package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	uploadv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/upload/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hikube/ferry/pkg/kube"
	"github.com/hikube/ferry/uploader"
)

// importSuite: ferry import from the loopback HTTP server into a
// DataVolume (real kube-apiserver, fake CDI upload proxy over TLS) vs
// ferry convert of the same URL to a local file, and vs what a user
// does by hand: curl download, qemu-img convert, curl upload of the RAW.
// Every upload's RAW, as the CDI peer received it, must hash like
// qemu-img's conversion, or the bench stops.
func importSuite(dir, ferry string, sel []variant, runs int) {
	c := startCluster(dir)
	if c == nil {
		return
	}
	defer c.stop()
	base, stopHTTP := startHTTP(dir)
	defer stopHTTP()

	fmt.Printf("\nferry import URL dv:// (fake CDI behind kube-apiserver, TLS upload proxy) vs ferry convert URL FILE vs curl+qemu-img+curl (median of %d)\n", runs)
	fmt.Printf("%-16s %8s %9s %9s %7s %9s %7s %9s\n", "format", "file", "import", "convert", "i/c", "chain", "i/chain", "peak RSS")
	out := filepath.Join(dir, "out.raw")
	dl := filepath.Join(dir, "download.tmp")
	seq := 0
	newName := func(kind string) string {
		seq++
		return fmt.Sprintf("bench-%s-%d", kind, seq)
	}
	row := func(label string, src string, imp, conv, chain time.Duration, rss int64) {
		fmt.Printf("%-16s %8s %8.2fs %8.2fs %7.2f %8.2fs %7.2f %9s\n", label, humanSize(fileSize(src)),
			imp.Seconds(), conv.Seconds(), imp.Seconds()/conv.Seconds(), chain.Seconds(), imp.Seconds()/chain.Seconds(), humanSize(rss*1024))
	}
	var floor, curlFloor time.Duration
	for i, v := range sel {
		src := filepath.Join(dir, v.file)
		sum := fileSHA256(src)
		srcURL := base + "/" + v.file
		vsize := virtualSize(src, v.fmt)
		warm(src)

		// The chain first: its qemu-img RAW is the reference digest every
		// upload is checked against.
		var ref string
		chain := median(runs, func() (time.Duration, int64) {
			name := newName("chain")
			// Outside the timed part, as a user running kubectl first.
			tok := c.prepareUpload(name, vsize)
			os.Remove(dl)
			os.Remove(out)
			settle()
			d, _ := timedCmd(c.upload(fmt.Sprintf(`curl -sSf -o "$DL" "$URL" && qemu-img convert -f %s -O raw -m 16 -W "$DL" "$OUT" && `, v.fmt)+curlUpload,
				out, tok, "DL="+dl, "URL="+srcURL))
			if ref == "" {
				ref = fileSHA256(out)
			}
			c.check(name, ref, "")
			c.forget(name)
			return d, 0
		})
		os.Remove(dl)
		if i == 0 {
			// The floor: the RAW itself uploaded, nothing to fetch or
			// convert; what is left is the upload endpoint's rate.
			floor = median(runs, func() (time.Duration, int64) {
				name := newName("raw")
				settle()
				d, r := timed(ferry, "import", "-q", "--kubeconfig", c.kubeconfig, out, "dv://"+c.ns+"/"+name)
				c.check(name, ref, "")
				c.forget(name)
				return d, r
			})
			curlFloor = median(runs, func() (time.Duration, int64) {
				name := newName("curl")
				tok := c.prepareUpload(name, vsize)
				settle()
				d, r := timedCmd(c.upload(curlUpload, out, tok))
				c.check(name, ref, "")
				c.forget(name)
				return d, r
			})
		}
		os.Remove(out)

		var rss int64
		importRuns := func(kind, enc string, extra ...string) time.Duration {
			return median(runs, func() (time.Duration, int64) {
				name := newName(kind)
				settle()
				args := append([]string{"import", "-q", "--kubeconfig", c.kubeconfig, "--checksum", "sha256:" + sum}, extra...)
				d, r := timed(ferry, append(args, srcURL, "dv://"+c.ns+"/"+name)...)
				rss = max(rss, r)
				c.check(name, ref, enc)
				c.forget(name)
				return d, r
			})
		}
		imp := importRuns("import", "")
		conv := median(runs, func() (time.Duration, int64) {
			os.Remove(out)
			settle()
			return timed(ferry, "convert", "-q", "--checksum", "sha256:"+sum, srcURL, out)
		})
		os.Remove(out)
		row(v.name, src, imp, conv, chain, rss)

		// One variant again with a compressed upload stream (CDI
		// decompresses it); convert and chain are the same as above.
		if i == 0 {
			rss = 0
			z := importRuns("zstd", "zstd", "--compress", "zstd")
			row(v.name+" zstd", src, z, conv, chain, rss)
		}
	}
	if len(sel) > 0 {
		fmt.Printf("\nfloor: %s's RAW as a local file (no fetch, no conversion) uploaded by ferry import: %.2fs, by curl -T: %.2fs\n",
			sel[0].name, floor.Seconds(), curlFloor.Seconds())
	}
	fmt.Println("import: ferry import URL dv://NS/NAME --checksum (creates the DataVolume, waits for the upload pod, uploads, waits for Succeeded)")
	fmt.Println("convert: ferry convert URL FILE --checksum (flushed); chain: curl -o, qemu-img convert -m 16 -W, curl -T to /v1beta1/upload (DataVolume and token made beforehand, untimed)")
	fmt.Println("every uploaded RAW's sha256, as the CDI peer received it, equals qemu-img's; \"zstd\": import --compress zstd")
	fmt.Println("targets: i/c <= 1.20, i/chain <= 0.50, peak RSS <= 256M")
}

// curlUpload uploads the RAW file $OUT as CDI documents it. curl -T
// streams the file; --data-binary @FILE would read it all into memory
// first.
const curlUpload = `curl -sSf -o /dev/null --cacert "$CA" -H "Authorization: Bearer $TOKEN" -X POST -T "$OUT" "$PROXY/v1beta1/upload"`

// upload is a shell running script with the upload's parameters in its
// environment (the token stays off command lines).
func (c *testCluster) upload(script, out, token string, env ...string) *exec.Cmd {
	cmd := exec.Command("sh", "-c", script)
	cmd.Env = append(os.Environ(), "OUT="+out, "CA="+c.ca, "TOKEN="+token, "PROXY="+c.proxy)
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// settle flushes dirty pages, so a run does not pay for the previous
// one's writeback (the CDI peer does not fsync what it receives).
func settle() { syscall.Sync() }

func virtualSize(path, format string) int64 {
	b, err := exec.Command("qemu-img", "info", "--output=json", "-f", format, path).Output()
	must(err)
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	must(json.Unmarshal(b, &info))
	return info.VirtualSize
}

// testCluster is a running ferry-testcluster: the kube and CDI peers.
type testCluster struct {
	cmd                               *exec.Cmd
	stdin                             io.Closer
	kubeconfig, ns, proxy, ca, ctlURL string
	dir                               string // received images
	kc                                *kube.Client
}

// startCluster builds and starts ferry-testcluster; nil when its tools are
// not installed.
func startCluster(dir string) *testCluster {
	cdiDir := filepath.Join(dir, "cdi")
	os.RemoveAll(cdiDir)
	// A long token lifetime: the chain's token is made before its
	// download and conversion, which a slow machine may stretch past
	// CDI's 5 minutes. ferry refreshes its own either way.
	cmd := exec.Command(buildTool(dir, "ferry-testcluster"), "-dir", cdiDir, "-token-ttl", "1h", "-stdin")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	must(err)
	stdout, err := cmd.StdoutPipe()
	must(err)
	logf("starting the kube and CDI peers")
	must(cmd.Start())
	c := &testCluster{cmd: cmd, stdin: stdin, dir: cdiDir}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && sc.Text() != "ready" {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "kubeconfig":
			c.kubeconfig = v
		case "namespace":
			c.ns = v
		case "proxy":
			c.proxy = v
		case "ca":
			c.ca = v
		case "control":
			c.ctlURL = v
		}
	}
	if sc.Text() != "ready" {
		err := cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 3 {
			logf("kube peers not installed (make tools): skipping import")
			return nil
		}
		must(fmt.Errorf("ferry-testcluster: %v", err))
	}
	go io.Copy(io.Discard, stdout)
	c.kc, err = kube.New(kube.Options{Kubeconfig: c.kubeconfig})
	must(err)
	return c
}

func (c *testCluster) stop() {
	// Closing stdin stops it; it then stops etcd and kube-apiserver.
	c.stdin.Close()
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		c.cmd.Process.Kill()
		<-done
	}
	os.RemoveAll(c.dir)
}

// prepareUpload does what a user does with kubectl before uploading by
// hand, as ferry does it: an upload DataVolume like ferry's, wait for
// UploadReady, an UploadTokenRequest. It returns the token.
func (c *testCluster) prepareUpload(name string, virtual int64) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const mib = 1 << 20
	size := (virtual + mib - 1) / mib * mib
	dv := &cdiv1.DataVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.ns, Annotations: map[string]string{uploader.AnnImmediateBinding: ""}},
		Spec: cdiv1.DataVolumeSpec{
			ContentType: cdiv1.DataVolumeKubeVirt,
			Source:      &cdiv1.DataVolumeSource{Upload: &cdiv1.DataVolumeSourceUpload{}},
			Storage: &cdiv1.StorageSpec{
				AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany},
				VolumeMode:       ptr.To(corev1.PersistentVolumeBlock),
				StorageClassName: ptr.To("replicated"),
				Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI),
				}},
			},
		},
	}
	must(c.kc.Create(ctx, dv))
	for dv.Status.Phase != cdiv1.UploadReady {
		time.Sleep(50 * time.Millisecond)
		must(c.kc.Get(ctx, client.ObjectKeyFromObject(dv), dv))
	}
	req := &uploadv1.UploadTokenRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.ns},
		Spec:       uploadv1.UploadTokenRequestSpec{PvcName: name},
	}
	must(c.kc.Create(ctx, req))
	if req.Status.Token == "" {
		must(errors.New("no upload token"))
	}
	return req.Status.Token
}

// check stops the bench unless the CDI peer received exactly the RAW
// whose sha256 is want, with body encoding enc.
func (c *testCluster) check(name, want, enc string) {
	resp, err := http.Get(c.ctlURL + "/received?" + url.Values{"ns": {c.ns}, "name": {name}}.Encode())
	must(err)
	defer resp.Body.Close()
	var u struct {
		SHA256, Encoding string
		Size             int64
	}
	if resp.StatusCode != http.StatusOK {
		must(fmt.Errorf("DataVolume %s: nothing received (%s)", name, resp.Status))
	}
	must(json.NewDecoder(resp.Body).Decode(&u))
	if u.SHA256 != want || u.Encoding != enc {
		must(fmt.Errorf("DataVolume %s received sha256 %s (%s bytes, encoding %q), want qemu-img's %s (encoding %q)",
			name, u.SHA256, humanSize(u.Size), u.Encoding, want, enc))
	}
}

// forget frees what the peer holds for name (its RAW is as large as the
// disk's data).
func (c *testCluster) forget(name string) {
	resp, err := http.Post(c.ctlURL+"/forget?"+url.Values{"ns": {c.ns}, "name": {name}}.Encode(), "", nil)
	must(err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		must(fmt.Errorf("forget %s: %s", name, resp.Status))
	}
}
