package lifecycle_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	kubevirtv1 "kubevirt.io/api/core/v1"
	snapshotv1 "kubevirt.io/api/snapshot/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hikube/ferry/pkg/lifecycle"
)

func TestSnapshotAndRestore(t *testing.T) {
	c, kv := cluster(t)
	lc := userClient(t, c)
	ctx := ctxT(t, 2*time.Minute)
	ns := c.Namespace
	before := pattern(1<<20, 21)
	if err := kv.ImportedDisk(ctx, ns, "db-root", before, corev1.ReadWriteMany); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Create(ctx, lifecycle.CreateOptions{Name: "db", Disk: &lifecycle.DiskRef{Kind: "dv", Name: "db-root"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.WaitReady(ctx, ns, "db", time.Minute); err != nil {
		t.Fatal(err)
	}
	snap, err := lc.Snapshot(ctx, lifecycle.SnapshotOptions{VM: "db", Name: "db-before", Wait: true, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if !snap.ReadyToUse || snap.Phase != "Succeeded" || len(snap.Indications) != 2 || snap.Indications[0] != "Online" || snap.Indications[1] != "NoGuestAgent" || len(snap.Notes) != 2 {
		t.Fatalf("snapshot %+v", snap)
	}
	// A second one with the default name.
	s2, err := lc.Snapshot(ctx, lifecycle.SnapshotOptions{VM: "db", Wait: true, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	list, err := lc.Snapshots(ctx, ns, "db")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || (list[0].Name != "db-before" && list[1].Name != "db-before") {
		t.Fatalf("snapshots %+v", list)
	}
	t.Logf("snapshots: %s, %s", list[0].Name, list[1].Name)
	_ = s2

	// The guest writes after the snapshot.
	kv.SetDisk(ns, "db-root", pattern(1<<20, 99))

	// Restore on a running VM: refused clearly, nothing created.
	_, err = lc.Restore(ctx, lifecycle.RestoreOptions{VM: "db", Snapshot: "db-before", Wait: true})
	if !errors.Is(err, lifecycle.ErrRunning) {
		t.Fatalf("restore on a running VM: %v", err)
	}
	mustContain(t, err, "restore vm "+ns+"/db", "stop it first", "--stop")
	var restores snapshotv1.VirtualMachineRestoreList
	if err := admin(c).List(ctx, &restores, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(restores.Items) != 0 {
		t.Fatalf("restores created: %d", len(restores.Items))
	}
	// A snapshot of another VM, or a missing one: refused.
	_, err = lc.Restore(ctx, lifecycle.RestoreOptions{VM: "db", Snapshot: "nope"})
	if !errors.Is(err, lifecycle.ErrNotFound) {
		t.Fatalf("missing snapshot: %v", err)
	}

	// --stop: stopped, restored, started again.
	res, err := lc.Restore(ctx, lifecycle.RestoreOptions{VM: "db", Snapshot: "db-before", Stop: true, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Complete || !res.Stopped || !res.Restarted || res.Volumes["rootdisk"] == "" {
		t.Fatalf("restore %+v", res)
	}
	if got := kv.Disk(ns, res.Volumes["rootdisk"]); !bytes.Equal(got, before) {
		t.Fatal("restored volume does not hold the snapshot's contents")
	}
	st, err := lc.WaitReady(ctx, ns, "db", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if st.Disks[0].Claim != res.Volumes["rootdisk"] {
		t.Fatalf("vm disk %s, restored %s", st.Disks[0].Claim, res.Volumes["rootdisk"])
	}

	// A failing snapshot is reported with KubeVirt's message.
	kv.FailSnapshots(true)
	defer kv.FailSnapshots(false)
	_, err = lc.Snapshot(ctx, lifecycle.SnapshotOptions{VM: "db", Name: "db-bad", Wait: true, Timeout: time.Minute})
	if !errors.Is(err, lifecycle.ErrFailed) {
		t.Fatalf("failed snapshot: %v", err)
	}
	mustContain(t, err, "snapshot vm "+ns+"/db", "db-bad", "Failed to freeze")
}

func TestMigrate(t *testing.T) {
	c, kv := cluster(t)
	lc := userClient(t, c)
	ctx := ctxT(t, 2*time.Minute)
	ns := c.Namespace
	if err := kv.ImportedDisk(ctx, ns, "mig-root", pattern(1<<16, 5), corev1.ReadWriteMany); err != nil {
		t.Fatal(err)
	}
	if err := kv.ImportedDisk(ctx, ns, "rwo-root", pattern(1<<16, 6), corev1.ReadWriteOnce); err != nil {
		t.Fatal(err)
	}
	for _, v := range []struct{ vm, disk string }{{"mig", "mig-root"}, {"pinned", "rwo-root"}} {
		if _, err := lc.Create(ctx, lifecycle.CreateOptions{Name: v.vm, Disk: &lifecycle.DiskRef{Kind: "dv", Name: v.disk}, DataDisks: []string{"1Gi"}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, vm := range []string{"mig", "pinned"} {
		if _, err := lc.WaitReady(ctx, ns, vm, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	res, err := lc.Migrate(ctx, lifecycle.MigrateOptions{VM: "mig", Wait: true, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if res.Phase != "Succeeded" || res.SourceNode == "" || res.TargetNode == "" || res.SourceNode == res.TargetNode || res.ObservedSeconds <= 0 || res.DurationSeconds < 0 {
		t.Fatalf("migration %+v", res)
	}
	st, _ := lc.Get(ctx, ns, "mig")
	if st.Node != res.TargetNode {
		t.Fatalf("vm on %s after migrating to %s", st.Node, res.TargetNode)
	}

	// ReadWriteOnce disk: refused by the preflight, no migration object.
	_, err = lc.Migrate(ctx, lifecycle.MigrateOptions{VM: "pinned", Wait: true})
	if !errors.Is(err, lifecycle.ErrNotMigratable) {
		t.Fatalf("rwo: %v", err)
	}
	mustContain(t, err, "migrate vm "+ns+"/pinned: preflight", "rwo-root", "ReadWriteOnce, not ReadWriteMany")
	var migs kubevirtv1.VirtualMachineInstanceMigrationList
	if err := admin(c).List(ctx, &migs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, m := range migs.Items {
		if m.Spec.VMIName == "pinned" {
			t.Fatalf("migration created for pinned: %s", m.Name)
		}
	}

	// Not running: refused.
	if _, err := lc.Power(ctx, lifecycle.ActionStop, lifecycle.PowerOptions{Name: "mig", Wait: true, Timeout: time.Minute}); err != nil {
		t.Fatal(err)
	}
	_, err = lc.Migrate(ctx, lifecycle.MigrateOptions{VM: "mig"})
	if !errors.Is(err, lifecycle.ErrNotRunning) {
		t.Fatalf("stopped: %v", err)
	}
	mustContain(t, err, "no VirtualMachineInstance")
	vm := &kubevirtv1.VirtualMachine{}
	if err := admin(c).Get(ctx, types.NamespacedName{Namespace: ns, Name: "mig"}, vm); err != nil {
		t.Fatal(err)
	}
}
