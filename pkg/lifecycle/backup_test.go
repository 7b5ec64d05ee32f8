package lifecycle_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	corev1 "k8s.io/api/core/v1"
	exportv1 "kubevirt.io/api/export/v1beta1"
	snapshotv1 "kubevirt.io/api/snapshot/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hikube/ferry/internal/testpeer/kubevirt"
	miniopeer "github.com/hikube/ferry/internal/testpeer/minio"
	"github.com/hikube/ferry/pkg/lifecycle"
)

func s3peer(t *testing.T, bucket string) (*miniopeer.Server, lifecycle.S3Options) {
	t.Helper()
	srv := miniopeer.Start(t)
	if err := srv.Client.MakeBucket(t.Context(), bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	return srv, lifecycle.S3Options{Endpoint: srv.URL, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true}
}

func getObject(t *testing.T, srv *miniopeer.Server, bucket, key string) []byte {
	t.Helper()
	o, err := srv.Client.GetObject(t.Context(), bucket, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	b, err := io.ReadAll(o)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return b
}

func listKeys(t *testing.T, srv *miniopeer.Server, bucket, prefix string) []string {
	t.Helper()
	var keys []string
	for o := range srv.Client.ListObjects(t.Context(), bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		keys = append(keys, o.Key)
	}
	return keys
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// noLeftovers checks that the backup's snapshot, export and token are
// gone.
func noLeftovers(t *testing.T, ctx context.Context, ns string) {
	t.Helper()
	k := admin(env.cluster)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var ex exportv1.VirtualMachineExportList
		var snaps snapshotv1.VirtualMachineSnapshotList
		var secrets corev1.SecretList
		k.List(ctx, &ex, client.InNamespace(ns))
		k.List(ctx, &snaps, client.InNamespace(ns), client.HasLabels{"ferry.hikube.io/backup"})
		k.List(ctx, &secrets, client.InNamespace(ns), client.HasLabels{"ferry.hikube.io/backup"})
		if len(ex.Items)+len(snaps.Items)+len(secrets.Items) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind: %d exports, %d snapshots, %d secrets", len(ex.Items), len(snaps.Items), len(secrets.Items))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestBackup(t *testing.T) {
	c, kv := cluster(t)
	lc := userClient(t, c)
	ctx := ctxT(t, 3*time.Minute)
	ns := c.Namespace
	srv, s3o := s3peer(t, "backups")
	root, data := pattern(3<<20+12345, 41), pattern(1<<20, 42)
	if err := kv.ImportedDisk(ctx, ns, "bk-root", root, corev1.ReadWriteMany); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Create(ctx, lifecycle.CreateOptions{Name: "bk", Disk: &lifecycle.DiskRef{Kind: "dv", Name: "bk-root"}, DataDisks: []string{"1Gi"}, SSHKeys: []string{sshKey}}); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.WaitReady(ctx, ns, "bk", time.Minute); err != nil {
		t.Fatal(err)
	}
	kv.SetDisk(ns, "bk-data1", data)

	// Running VM: snapshot first, export the snapshot, stream raw.
	lc.Now = func() time.Time { return time.Date(2025, 11, 1, 3, 0, 0, 0, time.UTC) }
	res, err := lc.Backup(ctx, lifecycle.BackupOptions{VM: "bk", To: "s3://backups/hikube/", S3: s3o, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	dir := "hikube/bk/20251101T030000Z/"
	if res.Location != "s3://backups/"+strings.TrimSuffix(dir, "/") {
		t.Fatalf("location %s", res.Location)
	}
	m := res.Manifest
	if m.Source != "VirtualMachineSnapshot" || m.Snapshot == "" || len(m.Disks) != 2 || len(res.Warnings) == 0 {
		t.Fatalf("manifest %+v, warnings %v", m, res.Warnings)
	}
	want := map[string][]byte{"rootdisk": root, "data1": data}
	for _, d := range m.Disks {
		got := getObject(t, srv, "backups", dir+d.Object)
		if !bytes.Equal(got, want[d.Volume]) {
			t.Fatalf("%s: stored %d bytes, differ from the disk (%d)", d.Volume, len(got), len(want[d.Volume]))
		}
		if d.SHA256 != sum(want[d.Volume]) || d.Bytes != int64(len(want[d.Volume])) {
			t.Fatalf("%s: recorded %s %d", d.Volume, d.SHA256, d.Bytes)
		}
	}
	sums := string(getObject(t, srv, "backups", dir+"SHA256SUMS"))
	if !strings.Contains(sums, sum(root)+"  rootdisk.raw\n") || !strings.Contains(sums, sum(data)+"  data1.raw\n") {
		t.Fatalf("SHA256SUMS %q", sums)
	}
	var stored lifecycle.Manifest
	if err := json.Unmarshal(getObject(t, srv, "backups", dir+"manifest.json"), &stored); err != nil {
		t.Fatal(err)
	}
	if stored.VM != "bk" || stored.VirtualMachine == nil || stored.VirtualMachine.Spec.Template == nil || stored.Ferry != "test" || stored.Completed.IsZero() {
		t.Fatalf("stored manifest %+v", stored)
	}
	noLeftovers(t, ctx, ns)

	// Stopped VM: the VM itself is exported, through the gzip link.
	if _, err := lc.Power(ctx, lifecycle.ActionStop, lifecycle.PowerOptions{Name: "bk", Wait: true, Timeout: time.Minute}); err != nil {
		t.Fatal(err)
	}
	lc.Now = func() time.Time { return time.Date(2025, 11, 2, 3, 0, 0, 0, time.UTC) }
	res, err = lc.Backup(ctx, lifecycle.BackupOptions{VM: "bk", To: "s3://backups/hikube", S3: s3o, Link: exportv1.KubeVirtGz})
	if err != nil {
		t.Fatal(err)
	}
	if res.Manifest.Source != "VirtualMachine" || res.Manifest.Disks[0].SHA256 != sum(root) {
		t.Fatalf("stopped backup %+v", res.Manifest)
	}
	noLeftovers(t, ctx, ns)

	// An export cut mid-stream once: the raw link resumes; the backup is
	// whole.
	before := kv.ExportRequests()
	kv.SetExportFault(kubevirt.ExportFault{CutAfter: 1 << 20, Times: 1})
	lc.Now = func() time.Time { return time.Date(2025, 11, 3, 3, 0, 0, 0, time.UTC) }
	res, err = lc.Backup(ctx, lifecycle.BackupOptions{VM: "bk", To: "s3://backups/hikube", S3: s3o, Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	if got := getObject(t, srv, "backups", "hikube/bk/20251103T030000Z/rootdisk.raw"); !bytes.Equal(got, root) {
		t.Fatal("resumed copy differs")
	}
	t.Logf("export GETs with one cut: %d", kv.ExportRequests()-before)
	// --keep 2 pruned the oldest.
	if len(res.Pruned) != 1 || !strings.HasSuffix(res.Pruned[0], "/20251101T030000Z") {
		t.Fatalf("pruned %v", res.Pruned)
	}
	if keys := listKeys(t, srv, "backups", "hikube/bk/20251101T030000Z/"); len(keys) != 0 {
		t.Fatalf("pruned backup left %v", keys)
	}

	// An export that keeps failing: a clean error, no manifest, nothing
	// of this backup left in the bucket, nothing left in the cluster.
	kv.SetExportFault(kubevirt.ExportFault{BreakAt: 2 << 20, Times: -1})
	defer kv.SetExportFault(kubevirt.ExportFault{})
	lc.Now = func() time.Time { return time.Date(2025, 11, 4, 3, 0, 0, 0, time.UTC) }
	_, err = lc.Backup(ctx, lifecycle.BackupOptions{VM: "bk", To: "s3://backups/hikube", S3: s3o, Keep: 1, Retries: 2})
	mustContain(t, err, "backup vm "+ns+"/bk: copy volume rootdisk (claim bk-root)")
	if keys := listKeys(t, srv, "backups", "hikube/bk/20251104T030000Z/"); len(keys) != 0 {
		t.Fatalf("failed backup left %v", keys)
	}
	// And no pruning happened on failure.
	if keys := listKeys(t, srv, "backups", "hikube/bk/20251102T030000Z/manifest.json"); len(keys) != 1 {
		t.Fatal("a failed backup pruned older ones")
	}
	noLeftovers(t, ctx, ns)
	kv.SetExportFault(kubevirt.ExportFault{})

	// Restore the whole VM from the newest backup, as another VM.
	imported := map[string]bool{}
	rb, err := lc.RestoreBackup(ctx, lifecycle.RestoreBackupOptions{Backup: "s3://backups/hikube/bk", S3: s3o, Name: "bk-copy", RunStrategy: "Always",
		Import: func(ctx context.Context, src, checksum string, dst lifecycle.DiskTarget) error {
			// `ferry import` in the CLI; here: read, check, land.
			key := strings.TrimPrefix(src, "s3://backups/")
			b := getObject(t, srv, "backups", key)
			if "sha256:"+sum(b) != checksum {
				return errors.New("checksum mismatch")
			}
			imported[dst.Name] = true
			return kv.ImportedDisk(ctx, dst.Namespace, dst.Name, b, dst.PVCAccessModes()[0])
		}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(rb.Backup, "/20251103T030000Z") || rb.Disks["rootdisk"] != "bk-copy-rootdisk" || !imported["bk-copy-data1"] {
		t.Fatalf("restore-backup %+v", rb)
	}
	// The recorded run strategy was Halted (stopped above); RunStrategy
	// overrode it.
	st, err := lc.WaitReady(ctx, ns, "bk-copy", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(kv.Disk(ns, "bk-copy-rootdisk"), root) || st.Disks[0].Claim != "bk-copy-rootdisk" {
		t.Fatalf("restored vm %+v", st)
	}
	_, err = lc.RestoreBackup(ctx, lifecycle.RestoreBackupOptions{Backup: "s3://backups/hikube/bk", S3: s3o, Name: "bk-copy",
		Import: func(context.Context, string, string, lifecycle.DiskTarget) error { return nil }})
	mustContain(t, err, "already exists")
}

func TestVerify(t *testing.T) {
	c, kv := cluster(t)
	lc := userClient(t, c)
	ctx := ctxT(t, time.Minute)
	ns := c.Namespace
	img := pattern(5<<20+7, 77)
	if err := kv.ImportedDisk(ctx, ns, "golden-fixture", img, corev1.ReadWriteMany); err != nil {
		t.Fatal(err)
	}
	res, err := lc.Verify(ctx, lifecycle.VerifyOptions{Disk: lifecycle.DiskRef{Kind: "dv", Name: "golden-fixture"}, Digest: "sha256:" + strings.ToUpper(sum(img))})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Match || res.Bytes != int64(len(img)) || res.Actual != "sha256:"+sum(img) {
		t.Fatalf("verify %+v", res)
	}
	other := sum([]byte("another image"))
	res, err = lc.Verify(ctx, lifecycle.VerifyOptions{Disk: lifecycle.DiskRef{Kind: "dv", Name: "golden-fixture"}, Digest: "sha256:" + other})
	if !errors.Is(err, lifecycle.ErrDigestMismatch) {
		t.Fatalf("mismatch: %v", err)
	}
	mustContain(t, err, "verify "+ns+"/golden-fixture", "volume holds sha256:"+sum(img), "expected sha256:"+other)
	if res == nil || res.Match {
		t.Fatalf("result %+v", res)
	}
	noLeftovers(t, ctx, ns)
	_, err = lc.Verify(ctx, lifecycle.VerifyOptions{Disk: lifecycle.DiskRef{Kind: "dv", Name: "missing"}, Digest: "sha256:" + other})
	if !errors.Is(err, lifecycle.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
}
