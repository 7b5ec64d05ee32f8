package lifecycle_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	kubevirtv1 "kubevirt.io/api/core/v1"
	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hikube/ferry/pkg/lifecycle"
)

const sshKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFerryTestKey test@ferry"

// A VM booting an imported disk, through its whole power cycle.
func TestImportedDiskLifecycle(t *testing.T) {
	c, kv := cluster(t)
	lc := userClient(t, c)
	ctx := ctxT(t, 2*time.Minute)
	ns := c.Namespace
	if err := kv.ImportedDisk(ctx, ns, "legacy-root", pattern(1<<20, 1), corev1.ReadWriteMany); err != nil {
		t.Fatal(err)
	}
	res, err := lc.Create(ctx, lifecycle.CreateOptions{Name: "legacy", Disk: &lifecycle.DiskRef{Kind: "dv", Name: "legacy-root"},
		SSHKeys: []string{sshKey}, CloudInit: "#cloud-config\npackages: [qemu-guest-agent]\n", Firmware: "efi", CPU: 2, Memory: "2Gi"})
	if err != nil {
		t.Fatal(err)
	}
	if res.VM != "legacy" || len(res.Created) != 1 || res.Created[0] != "VirtualMachine/legacy" {
		t.Fatalf("created %+v", res)
	}
	st, err := lc.WaitReady(ctx, ns, "legacy", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Ready || st.Node == "" || len(st.IPs) == 0 || st.Status != "Running" {
		t.Fatalf("status %+v", st)
	}
	if len(st.Disks) != 2 || st.Disks[0].Claim != "legacy-root" || st.Disks[0].Phase != "Succeeded" || st.Disks[0].AccessModes[0] != "ReadWriteMany" || st.Disks[1].Kind != "cloudInitNoCloud" {
		t.Fatalf("disks %+v", st.Disks)
	}
	// What the real schema accepted is what ferry wrote.
	vm := &kubevirtv1.VirtualMachine{}
	if err := admin(c).Get(ctx, types.NamespacedName{Namespace: ns, Name: "legacy"}, vm); err != nil {
		t.Fatal(err)
	}
	if vm.Spec.Template.Spec.Domain.Firmware.Bootloader.EFI == nil || vm.Spec.Template.Spec.Volumes[1].CloudInitNoCloud == nil {
		t.Fatalf("stored spec %+v", vm.Spec.Template.Spec)
	}

	list, err := lc.List(ctx, ns)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, v := range list {
		found = found || (v.Name == "legacy" && v.Ready && v.Node == st.Node)
	}
	if !found {
		t.Fatalf("list %+v", list)
	}

	// Power: the cluster serves no subresource API here: runStrategy.
	pr, err := lc.Power(ctx, lifecycle.ActionStop, lifecycle.PowerOptions{Name: "legacy", Wait: true, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if pr.Via != lifecycle.ViaRunStrategy || pr.Status.Phase != "" || pr.Status.RunStrategy != "Halted" {
		t.Fatalf("stop %+v %+v", pr, pr.Status)
	}
	if pr, err = lc.Power(ctx, lifecycle.ActionStop, lifecycle.PowerOptions{Name: "legacy"}); err != nil || pr.Via != lifecycle.ViaNothing {
		t.Fatalf("second stop: %+v %v", pr, err)
	}
	_, err = lc.Power(ctx, lifecycle.ActionRestart, lifecycle.PowerOptions{Name: "legacy"})
	if !errors.Is(err, lifecycle.ErrNotRunning) {
		t.Fatalf("restart of a stopped VM: %v", err)
	}
	if pr, err = lc.Power(ctx, lifecycle.ActionStart, lifecycle.PowerOptions{Name: "legacy", Wait: true, Timeout: time.Minute}); err != nil || !pr.Status.Ready {
		t.Fatalf("start: %+v %v", pr, err)
	}
	before := pr.Status.IPs
	pr, err = lc.Power(ctx, lifecycle.ActionRestart, lifecycle.PowerOptions{Name: "legacy", Wait: true, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if pr.Via != lifecycle.ViaVMIDelete || !pr.Status.Ready {
		t.Fatalf("restart %+v", pr)
	}
	t.Logf("restart: IPs %v → %v", before, pr.Status.IPs)

	// Delete, keeping the imported disk.
	dr, err := lc.Delete(ctx, lifecycle.DeleteOptions{Name: "legacy", KeepDisks: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(dr.Kept) != 1 || dr.Kept[0] != "DataVolume/legacy-root" {
		t.Fatalf("delete %+v", dr)
	}
	waitGone(t, &kubevirtv1.VirtualMachineInstance{}, ns, "legacy")
	if err := admin(c).Get(ctx, types.NamespacedName{Namespace: ns, Name: "legacy-root"}, &cdiv1.DataVolume{}); err != nil {
		t.Fatalf("kept disk: %v", err)
	}
	if _, err := lc.Get(ctx, ns, "legacy"); !errors.Is(err, lifecycle.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
}

func waitGone(t *testing.T, obj client.Object, ns, name string) {
	t.Helper()
	k := admin(env.cluster)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		err := k.Get(t.Context(), types.NamespacedName{Namespace: ns, Name: name}, obj)
		if apierrors.IsNotFound(err) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%T %s/%s still there", obj, ns, name)
}

// A VM cloned from a golden image: dataVolumeTemplates, Block + RWX on
// replicated; deleted with its disks.
func TestGoldenImageClone(t *testing.T) {
	c, kv := cluster(t)
	lc := userClient(t, c)
	ctx := ctxT(t, 2*time.Minute)
	ns := c.Namespace
	golden := pattern(2<<20, 9)
	if err := kv.GoldenImage(ctx, ns, "ubuntu-2404", golden); err != nil {
		t.Fatal(err)
	}
	_, err := lc.Create(ctx, lifecycle.CreateOptions{Name: "app", Image: "ubuntu-2404", Size: "20Gi", DataDisks: []string{"5Gi", "1Gi"}, SSHKeys: []string{sshKey}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := lc.WaitReady(ctx, ns, "app", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Disks) != 4 {
		t.Fatalf("disks %+v", st.Disks)
	}
	root := st.Disks[0]
	if root.Claim != "app-rootdisk" || root.Phase != "Succeeded" || root.VolumeMode != "Block" || root.AccessModes[0] != "ReadWriteMany" || root.StorageClass != "replicated" || root.Size != "20Gi" {
		t.Fatalf("root %+v", root)
	}
	if !bytes.Equal(kv.Disk(ns, "app-rootdisk"), golden) {
		t.Fatal("the clone does not hold the golden image")
	}
	dv := &cdiv1.DataVolume{}
	if err := admin(c).Get(ctx, types.NamespacedName{Namespace: ns, Name: "app-rootdisk"}, dv); err != nil {
		t.Fatal(err)
	}
	if dv.Spec.SourceRef == nil || dv.Spec.SourceRef.Kind != "DataSource" || dv.Spec.SourceRef.Name != "ubuntu-2404" {
		t.Fatalf("template DataVolume %+v", dv.Spec)
	}
	// Already exists: a clear error, nothing else created.
	if _, err := lc.Create(ctx, lifecycle.CreateOptions{Name: "app", Image: "ubuntu-2404"}); err == nil {
		t.Fatal("second create succeeded")
	} else {
		mustContain(t, err, "create vm", "already exists")
	}
	// A missing golden image or disk fails before anything is written.
	_, err = lc.Create(ctx, lifecycle.CreateOptions{Name: "nothing", Image: "no-such-image"})
	if !errors.Is(err, lifecycle.ErrNotFound) {
		t.Fatalf("missing image: %v", err)
	}
	mustContain(t, err, "golden image (DataSource) "+ns+"/no-such-image")
	_, err = lc.Create(ctx, lifecycle.CreateOptions{Name: "nothing", Disk: &lifecycle.DiskRef{Kind: "dv", Name: "no-such-disk"}})
	mustContain(t, err, "disk dv://no-such-disk")

	dr, err := lc.Delete(ctx, lifecycle.DeleteOptions{Name: "app"})
	if err != nil {
		t.Fatal(err)
	}
	if len(dr.Deleted) != 4 {
		t.Fatalf("deleted %v", dr.Deleted)
	}
	waitGone(t, &cdiv1.DataVolume{}, ns, "app-data2")
}

// A VM that never becomes Ready: --wait times out with what it saw.
func TestWaitReadyTimeout(t *testing.T) {
	c, kv := cluster(t)
	lc := userClient(t, c)
	ctx := ctxT(t, time.Minute)
	ns := c.Namespace
	kv.NeverReady(ns, "stuck", "0/3 nodes are available: 3 Insufficient memory.")
	if err := kv.ImportedDisk(ctx, ns, "stuck-root", pattern(1<<16, 3), corev1.ReadWriteMany); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Create(ctx, lifecycle.CreateOptions{Name: "stuck", Disk: &lifecycle.DiskRef{Kind: "dv", Name: "stuck-root"}, Memory: "512Gi"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	st, err := lc.WaitReady(ctx, ns, "stuck", 2*time.Second)
	if !errors.Is(err, lifecycle.ErrTimeout) {
		t.Fatalf("err %v", err)
	}
	mustContain(t, err, "wait for vm "+ns+"/stuck to be ready", "timed out after 2s", "ErrorUnschedulable", "Insufficient memory")
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("waited %s", d)
	}
	if st == nil || st.Ready {
		t.Fatalf("status %+v", st)
	}
}

// The Cozystack flavor writes VMInstance + VMDisk objects its schema
// accepts; power actions go through the VMInstance.
func TestCozystackFlavor(t *testing.T) {
	c, _ := cluster(t)
	lc := userClient(t, c)
	ctx := ctxT(t, time.Minute)
	ns := c.Namespace
	res, err := lc.Create(ctx, lifecycle.CreateOptions{Name: "shop", Flavor: lifecycle.FlavorCozystack, Image: "ubuntu", Size: "30Gi",
		DataDisks: []string{"10Gi"}, SSHKeys: []string{sshKey}, CloudInit: "#cloud-config\n"})
	if err != nil {
		t.Fatal(err)
	}
	if res.VM != "vm-instance-shop" || len(res.Created) != 3 {
		t.Fatalf("created %+v", res)
	}
	inst := &unstructured.Unstructured{}
	inst.SetAPIVersion("apps.cozystack.io/v1alpha1")
	inst.SetKind("VMInstance")
	if err := admin(c).Get(ctx, types.NamespacedName{Namespace: ns, Name: "shop"}, inst); err != nil {
		t.Fatal(err)
	}
	if it, _, _ := unstructured.NestedString(inst.Object, "spec", "instanceType"); it != "u1.large" {
		t.Fatalf("instance %v", inst.Object["spec"])
	}
	// Cozystack renders vm-instance-shop from it (played here by hand):
	// ferry finds it by the instance's name, and stops it through the
	// VMInstance, which Cozystack would otherwise revert the VM to.
	o := lifecycle.CreateOptions{Name: "vm-instance-shop", Disk: &lifecycle.DiskRef{Kind: "dv", Name: "vm-disk-shop-rootdisk"}}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	plan, err := lifecycle.Build(o, ns)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin(c).Create(ctx, plan.Objects[0]); err != nil {
		t.Fatal(err)
	}
	st, err := lc.Get(ctx, ns, "shop")
	if err != nil || st.Name != "vm-instance-shop" || st.Instance != "shop" {
		t.Fatalf("get shop: %+v %v", st, err)
	}
	pr, err := lc.Power(ctx, lifecycle.ActionStop, lifecycle.PowerOptions{Name: "shop"})
	if err != nil || pr.Via != lifecycle.ViaInstance {
		t.Fatalf("stop shop: %+v %v", pr, err)
	}
	if err := admin(c).Get(ctx, types.NamespacedName{Namespace: ns, Name: "shop"}, inst); err != nil {
		t.Fatal(err)
	}
	if rs, _, _ := unstructured.NestedString(inst.Object, "spec", "runStrategy"); rs != "Halted" {
		t.Fatalf("VMInstance runStrategy %q", rs)
	}
	// Deleting goes through the VMInstance and its VMDisks.
	dr, err := lc.Delete(ctx, lifecycle.DeleteOptions{Name: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	if len(dr.Deleted) != 3 {
		t.Fatalf("deleted %v", dr.Deleted)
	}
}
