package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hikube/ferry/internal/testpeer/cdi"
	kubepeer "github.com/hikube/ferry/internal/testpeer/kube"
	"github.com/hikube/ferry/internal/testpeer/kubevirt"
	miniopeer "github.com/hikube/ferry/internal/testpeer/minio"
	"github.com/hikube/ferry/internal/testutil"
	"github.com/hikube/ferry/pkg/lifecycle"
)

// The README's lifecycle example, through the binary, against the real
// apiserver, the fake CDI and KubeVirt, and MinIO: import → create →
// snapshot → backup → migrate → verify → restore-backup.
func TestVMLifecycleCLI(t *testing.T) {
	dir := t.TempDir()
	// Usage errors need no cluster.
	for _, args := range [][]string{
		{"vm", "create", "web"},
		{"vm", "create", "web", "--disk", "dv://a", "--image", "b"},
		{"vm", "create", "web", "--disk", "nope"},
		{"vm", "create", "web", "--image", "u", "--run-strategy", "Sometimes"},
		{"vm", "get"},
		{"vm", "restore", "web"},
		{"vm", "backup", "web"},
		{"vm", "backup", "web", "--to", "s3://b/p", "--schedule", "daily"},
		{"vm", "list", "-o", "xml"},
		{"verify", "dv://x", "--digest", "md5:00"},
	} {
		if r := ferry(t, nil, args...); r.code != exitUsage {
			t.Errorf("%v: exit %d, want %d: %s", args, r.code, exitUsage, r.stderr)
		}
	}
	// --dry-run prints the objects without a cluster.
	key := filepath.Join(dir, "id.pub")
	os.WriteFile(key, []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFerry demo@laptop\n"), 0o644)
	r := ferry(t, []string{"KUBECONFIG=/nonexistent"}, "vm", "create", "web", "--image", "ubuntu", "--size", "20Gi", "--ssh-key", key, "-n", "demo", "--dry-run")
	if r.code != 0 || !strings.Contains(r.stdout, "kind: VirtualMachine") || !strings.Contains(r.stdout, "sourceRef:") || !strings.Contains(r.stdout, "ssh-ed25519") {
		t.Fatalf("dry-run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c, err := kubepeer.Start(ctx, kubepeer.Options{Rules: append(slices.Clone(kubepeer.FerryRules), lifecycle.UserRules...)})
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
	kv, err := kubevirt.Start(ctx, c, kubevirt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Stop()
	s3 := miniopeer.Start(t)
	if err := s3.Client.MakeBucket(ctx, "backups", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	ns := c.Namespace
	kc := []string{"--kubeconfig", c.Kubeconfig}
	awsEnv := []string{"AWS_ACCESS_KEY_ID=" + s3.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s3.SecretKey, "AWS_ENDPOINT_URL=" + s3.URL, "FERRY_POLL_INTERVAL=50ms"}
	run := func(args ...string) result {
		t.Helper()
		return ferry(t, awsEnv, append(args, kc...)...)
	}
	jsonOf := func(r result, v any) {
		t.Helper()
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, r.stdout)
		}
	}

	// 1. import: a qcow2 lands as a DataVolume (CDI upload).
	img := fixture(t, dir, "-O", "qcow2")
	var imp struct {
		RawSHA256 string `json:"raw_sha256"`
	}
	jsonOf(run("import", img, "dv://"+ns+"/web-root", "--output", "json"), &imp)
	up := p.Received(ns, "web-root")
	if up == nil {
		t.Fatal("nothing uploaded")
	}
	raw, err := os.ReadFile(up.Path)
	if err != nil {
		t.Fatal(err)
	}
	kv.SetDisk(ns, "web-root", raw) // what the export server will serve

	// 2. create and wait.
	var cr lifecycle.CreateResult
	jsonOf(run("vm", "create", "web", "--disk", "dv://web-root", "--ssh-key", key, "--wait", "--timeout", "1m", "-o", "json"), &cr)
	if cr.Status == nil || !cr.Status.Ready || cr.Status.Node == "" {
		t.Fatalf("create %+v", cr)
	}
	r = run("vm", "get", "web")
	if r.code != 0 || !strings.Contains(r.stdout, "vm "+ns+"/web: Running (ready: yes") || !strings.Contains(r.stdout, "web-root") {
		t.Fatalf("get: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = run("vm", "list")
	if r.code != 0 || !strings.Contains(r.stdout, "web") || !strings.Contains(r.stdout, cr.Status.Node) {
		t.Fatalf("list: %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// 3. snapshot.
	var snap lifecycle.SnapshotInfo
	jsonOf(run("vm", "snapshot", "web", "--name", "web-before-upgrade", "--wait", "-o", "json"), &snap)
	if !snap.ReadyToUse || !slices.Contains(snap.Indications, "NoGuestAgent") {
		t.Fatalf("snapshot %+v", snap)
	}
	r = run("vm", "snapshots", "web")
	if r.code != 0 || !strings.Contains(r.stdout, "web-before-upgrade") {
		t.Fatalf("snapshots: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// Restore on a running VM: refused with the way out.
	r = run("vm", "restore", "web", "--snapshot", "web-before-upgrade")
	if r.code != exitFailure || !strings.Contains(r.stderr, "vm is running") || !strings.Contains(r.stderr, "--stop") {
		t.Fatalf("restore while running: %d %s", r.code, r.stderr)
	}

	// 4. backup to S3.
	var br lifecycle.BackupResult
	jsonOf(run("vm", "backup", "web", "--to", "s3://backups/hikube", "--s3-path-style", "-o", "json"), &br)
	if len(br.Manifest.Disks) != 1 || br.Manifest.Disks[0].SHA256 != imp.RawSHA256 {
		t.Fatalf("backup %+v (import raw sha256 %s)", br.Manifest, imp.RawSHA256)
	}
	// The backup's disk imports back with ferry import, checked by SHA256SUMS.
	rawKey := strings.TrimPrefix(br.Location, "s3://backups/") + "/rootdisk.raw"
	r = run("import", "s3://backups/"+rawKey, filepath.Join(dir, "back.raw"), "--checksum-url", "s3://backups/"+strings.TrimPrefix(br.Location, "s3://backups/")+"/SHA256SUMS", "--s3-path-style", "-q")
	if r.code != 0 {
		t.Fatalf("import from backup: %d %s", r.code, r.stderr)
	}
	if sum, _ := testutil.SHA256File(t, filepath.Join(dir, "back.raw")); sum != imp.RawSHA256 {
		t.Fatalf("backup round trip %s != %s", sum, imp.RawSHA256)
	}

	// 4b. the nightly schedule: the CronJob's exact command line, run as
	// its ServiceAccount (whose Role is all it has), succeeds.
	var sr lifecycle.ScheduleResult
	jsonOf(run("vm", "backup", "web", "--to", "s3://backups/nightly", "--s3-path-style", "--keep", "2", "--schedule", "0 3 * * *", "-o", "json"), &sr)
	tok, err := c.Clientset.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sr.ServiceAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	jobKC := filepath.Join(dir, "job.kubeconfig")
	if err := c.WriteKubeconfig(jobKC, tok.Status.Token); err != nil {
		t.Fatal(err)
	}
	r = ferry(t, append(awsEnv, "KUBECONFIG="+jobKC), sr.Command[1:]...)
	if r.code != 0 {
		t.Fatalf("the CronJob's command %v as its ServiceAccount: exit %d: %s", sr.Command, r.code, r.stderr)
	}
	// As that identity, nothing else: not even listing VMs.
	if r := ferry(t, []string{"KUBECONFIG=" + jobKC}, "vm", "list"); r.code != exitFailure || !strings.Contains(r.stderr, "forbidden") {
		t.Fatalf("vm list as the backup identity: %d %s", r.code, r.stderr)
	}

	// 5. migrate.
	var mr lifecycle.MigrationResult
	jsonOf(run("vm", "migrate", "web", "--wait", "-o", "json"), &mr)
	if mr.Phase != "Succeeded" || mr.SourceNode == mr.TargetNode || mr.TargetNode == "" {
		t.Fatalf("migrate %+v", mr)
	}
	r = run("vm", "migrate", "web", "--wait")
	if r.code != 0 || !strings.Contains(r.stdout, "migrated from "+mr.TargetNode) {
		t.Fatalf("second migration: %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// 6. verify the imported disk: match, then a mismatch.
	r = run("verify", "dv://"+ns+"/web-root", "--digest", "sha256:"+imp.RawSHA256)
	if r.code != 0 || !strings.Contains(r.stdout, "matches") {
		t.Fatalf("verify: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = run("verify", "dv://web-root", "--digest", "sha256:"+strings.Repeat("0", 64))
	if r.code != exitFailure || !strings.Contains(r.stderr, "digest mismatch") || !strings.Contains(r.stdout, "does NOT match") {
		t.Fatalf("verify mismatch: %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// 7. restore-backup: the disk goes back through ferry import (CDI
	// upload), the VM is recreated beside the original.
	var rb lifecycle.RestoreBackupResult
	jsonOf(run("vm", "restore-backup", "s3://backups/hikube/web", "--name", "web-copy", "--s3-path-style", "-o", "json"), &rb)
	if rb.Disks["rootdisk"] != "web-copy-rootdisk" {
		t.Fatalf("restore-backup %+v", rb)
	}
	if got := p.Received(ns, "web-copy-rootdisk"); got == nil || got.SHA256 != imp.RawSHA256 {
		t.Fatalf("restored upload %+v", got)
	}
	r = run("vm", "start", "web-copy", "--wait", "--timeout", "1m")
	if r.code != 0 {
		t.Fatalf("start web-copy: %d %s", r.code, r.stderr)
	}

	// 8. delete, keeping the disk.
	r = run("vm", "delete", "web", "--keep-disks")
	if r.code != 0 || !strings.Contains(r.stdout, "kept DataVolume/web-root") {
		t.Fatalf("delete: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// Nothing secret reached the output.
	for _, s := range []string{r.stdout, r.stderr} {
		if strings.Contains(s, s3.SecretKey) {
			t.Fatal("output holds the S3 secret")
		}
	}
}
