package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hikube/ferry/internal/testpeer/cdi"
	kubepeer "github.com/hikube/ferry/internal/testpeer/kube"
	"github.com/hikube/ferry/internal/testutil"
)

// ferry import against a real apiserver and the fake CDI, as a user runs
// it: kubeconfig flag, JSON report, exit codes.
func TestImportCLI(t *testing.T) {
	dir := t.TempDir()
	img := fixture(t, dir, "-O", "qcow2", "-c")
	want, _ := testutil.ReferenceSHA256(t, img, "qcow2")

	// Usage errors come before any cluster is needed.
	for _, args := range [][]string{
		{"import"},
		{"import", img, "ftp://x/y"},
		{"import", img, "dv://Bad_Name"},
		{"import", img, "dv://a", "--compress", "lz4"},
		{"import", img, "dv://a", "--replace", "--reuse-if-same"},
	} {
		if r := ferry(t, nil, args...); r.code != exitUsage {
			t.Errorf("%v: exit %d, want %d: %s", args, r.code, exitUsage, r.stderr)
		}
	}
	// A local store import needs no cluster either.
	store := filepath.Join(dir, "store")
	if r := ferry(t, nil, "import", img, "--store", store, "--name", "disk", "-q"); r.code != 0 {
		t.Fatalf("store import: exit %d: %s", r.code, r.stderr)
	}
	if sum, _ := testutil.SHA256File(t, filepath.Join(store, "disk.raw")); sum != want {
		t.Errorf("store image sha256 %s, want %s", sum, want)
	}
	if _, err := os.Stat(filepath.Join(store, "disk.json")); err != nil {
		t.Error(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := kubepeer.Start(ctx, kubepeer.Options{})
	if errors.Is(err, kubepeer.ErrNotInstalled) && os.Getenv("CI") != "true" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	p, err := cdi.Start(ctx, c, cdi.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()

	r := ferry(t, nil, "import", img, "dv://"+c.Namespace+"/debian", "--kubeconfig", c.Kubeconfig, "--compress", "zstd", "--output", "json")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var rep struct {
		Target     string `json:"target"`
		RawSHA256  string `json:"raw_sha256"`
		Format     string `json:"format"`
		DataVolume struct {
			DataVolume string `json:"data_volume"`
			Phases     []struct{ Phase string }
			Attempts   int  `json:"attempts"`
			Reused     bool `json:"reused"`
		} `json:"data_volume"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, r.stdout)
	}
	if rep.RawSHA256 != want || rep.Target != "dv://"+c.Namespace+"/debian" || rep.Format != "qcow2" || rep.DataVolume.Attempts != 1 {
		t.Errorf("report %+v", rep)
	}
	if got := p.Received(c.Namespace, "debian"); got == nil || got.SHA256 != want || got.Encoding != "zstd" {
		t.Errorf("received %+v", got)
	}
	// Again: the name is taken.
	r = ferry(t, nil, "import", img, "dv://debian", "--kubeconfig", c.Kubeconfig, "-q")
	if r.code != exitFailure || !strings.Contains(r.stderr, "--replace or --reuse-if-same") {
		t.Errorf("second import: exit %d: %s", r.code, r.stderr)
	}
	// Too small a size is refused before anything is created.
	r = ferry(t, nil, "import", img, "dv://small", "--kubeconfig", c.Kubeconfig, "--size", "1Mi", "-q")
	if r.code != exitFailure || !strings.Contains(r.stderr, "smaller than the image's virtual size") {
		t.Errorf("small size: exit %d: %s", r.code, r.stderr)
	}
	// No token or secret ever reaches the output.
	for _, s := range []string{r.stderr, r.stdout} {
		if strings.Contains(s, "eyJ") {
			t.Errorf("output holds a token: %s", s)
		}
	}
}
