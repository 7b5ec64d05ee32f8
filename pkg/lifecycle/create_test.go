package lifecycle

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kubevirtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

const key1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx user@laptop"

func TestCreateOptionsValidate(t *testing.T) {
	dv := &DiskRef{Kind: "dv", Name: "root"}
	tests := []struct {
		name string
		o    CreateOptions
		want string // error substring; "" = valid
	}{
		{"disk", CreateOptions{Name: "web", Disk: dv}, ""},
		{"image", CreateOptions{Name: "web", Image: "ubuntu", Size: "20Gi"}, ""},
		{"image other namespace", CreateOptions{Name: "web", Image: "golden/ubuntu"}, ""},
		{"iso install", CreateOptions{Name: "web", CDROMs: []DiskRef{{Kind: "dv", Name: "iso"}}, DataDisks: []string{"20Gi"}}, ""},
		{"bad name", CreateOptions{Name: "Web_1", Disk: dv}, "vm \"Web_1\""},
		{"nothing to boot", CreateOptions{Name: "web"}, "nothing to boot"},
		{"disk and image", CreateOptions{Name: "web", Disk: dv, Image: "ubuntu"}, "exclusive"},
		{"size without image", CreateOptions{Name: "web", Disk: dv, Size: "10Gi"}, "--size applies"},
		{"bad size", CreateOptions{Name: "web", Image: "u", Size: "lots"}, "--size"},
		{"bad data disk", CreateOptions{Name: "web", Disk: dv, DataDisks: []string{"-1Gi"}}, "--data-disk"},
		{"instancetype and cpu", CreateOptions{Name: "web", Disk: dv, InstanceType: "u1.large", CPU: 2}, "exclusive"},
		{"run strategy", CreateOptions{Name: "web", Disk: dv, RunStrategy: "Sometimes"}, "--run-strategy"},
		{"firmware", CreateOptions{Name: "web", Disk: dv, Firmware: "uefi"}, "--firmware"},
		{"flavor", CreateOptions{Name: "web", Disk: dv, Flavor: "openstack"}, "flavor"},
		{"vmdisk on kubevirt", CreateOptions{Name: "web", Disk: &DiskRef{Kind: "vmdisk", Name: "root"}}, "needs --flavor cozystack"},
		{"dv on cozystack", CreateOptions{Name: "web", Flavor: FlavorCozystack, Disk: dv}, "uses VMDisks"},
		{"cross namespace disk", CreateOptions{Name: "web", Namespace: "a", Disk: &DiskRef{Kind: "dv", Namespace: "b", Name: "root"}}, "own namespace"},
		{"bad ssh key", CreateOptions{Name: "web", Disk: dv, SSHKeys: []string{"not a key"}}, "ssh key 1"},
		{"keys with a script", CreateOptions{Name: "web", Disk: dv, SSHKeys: []string{key1}, CloudInit: "#!/bin/sh\necho hi\n"}, "not #cloud-config"},
		{"keys with cloud-config", CreateOptions{Name: "web", Disk: dv, SSHKeys: []string{key1}, CloudInit: "#cloud-config\npackages: [nginx]\n"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.o.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestCreateOptionsDefaults(t *testing.T) {
	o := CreateOptions{Name: "web", Disk: &DiskRef{Kind: "dv", Namespace: "prod", Name: "root"}}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.Namespace != "prod" || o.CPU != 2 || o.Memory != "4Gi" || o.RunStrategy != "Always" || o.Firmware != "bios" || o.StorageClass != "replicated" {
		t.Fatalf("defaults: %+v", o)
	}
	c := CreateOptions{Name: "web", Flavor: FlavorCozystack, Image: "ubuntu"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.InstanceType != DefaultCozystackInstanceType || c.CPU != 0 {
		t.Fatalf("cozystack defaults: %+v", c)
	}
	one := CreateOptions{Name: "web", Disk: &DiskRef{Kind: "dv", Name: "r"}, CPU: 1}
	one.Validate()
	if w := one.Warnings(); len(w) != 1 || !strings.Contains(w[0], "2 vCPU") {
		t.Fatalf("warnings %v", w)
	}
}

func build(t *testing.T, o CreateOptions) *Plan {
	t.Helper()
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := Build(o, "demo")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func vmOf(t *testing.T, p *Plan) *kubevirtv1.VirtualMachine {
	t.Helper()
	vm, ok := p.Objects[len(p.Objects)-1].(*kubevirtv1.VirtualMachine)
	if !ok {
		t.Fatalf("last object is %T", p.Objects[len(p.Objects)-1])
	}
	return vm
}

func TestBuildImageClone(t *testing.T) {
	p := build(t, CreateOptions{Name: "web", Image: "golden/ubuntu", Size: "30Gi", DataDisks: []string{"50Gi"},
		CDROMs: []DiskRef{{Kind: "dv", Name: "tools-iso"}}, SSHKeys: []string{key1}, Firmware: "efi"})
	vm := vmOf(t, p)
	if vm.Namespace != "demo" || *vm.Spec.RunStrategy != kubevirtv1.RunStrategyAlways {
		t.Fatalf("vm meta/run strategy: %s %v", vm.Namespace, *vm.Spec.RunStrategy)
	}
	if n := len(vm.Spec.DataVolumeTemplates); n != 2 {
		t.Fatalf("%d templates, want 2", n)
	}
	root := vm.Spec.DataVolumeTemplates[0]
	if root.Name != "web-rootdisk" || root.Spec.SourceRef == nil || root.Spec.SourceRef.Kind != "DataSource" ||
		root.Spec.SourceRef.Name != "ubuntu" || *root.Spec.SourceRef.Namespace != "golden" {
		t.Fatalf("root template: %+v", root)
	}
	s := root.Spec.Storage
	if *s.StorageClassName != "replicated" || *s.VolumeMode != corev1.PersistentVolumeBlock || s.AccessModes[0] != corev1.ReadWriteMany ||
		s.Resources.Requests.Storage().String() != "30Gi" {
		t.Fatalf("root storage: %+v", s)
	}
	if data := vm.Spec.DataVolumeTemplates[1]; data.Spec.Source == nil || data.Spec.Source.Blank == nil || data.Spec.Storage.Resources.Requests.Storage().String() != "50Gi" {
		t.Fatalf("data template: %+v", data)
	}
	spec := vm.Spec.Template.Spec
	if spec.Domain.CPU.Cores != 2 || spec.Domain.Memory.Guest.String() != "4Gi" {
		t.Fatalf("sizing: %+v %+v", spec.Domain.CPU, spec.Domain.Memory)
	}
	if spec.Domain.Firmware.Bootloader.EFI == nil || *spec.Domain.Firmware.Bootloader.EFI.SecureBoot {
		t.Fatalf("firmware: %+v", spec.Domain.Firmware.Bootloader)
	}
	var names []string
	for _, d := range spec.Domain.Devices.Disks {
		names = append(names, d.Name)
	}
	if got := strings.Join(names, ","); got != "rootdisk,data1,cdrom1,cloudinitdisk" {
		t.Fatalf("disks %s", got)
	}
	if d := spec.Domain.Devices.Disks[0]; d.BootOrder == nil || *d.BootOrder != 1 || d.Disk.Bus != "virtio" {
		t.Fatalf("root disk: %+v", d)
	}
	if d := spec.Domain.Devices.Disks[2]; d.CDRom == nil || d.CDRom.Bus != "sata" {
		t.Fatalf("cdrom: %+v", d)
	}
	ci := spec.Volumes[3].CloudInitNoCloud
	if ci == nil || !strings.HasPrefix(ci.UserData, "#cloud-config\n") || !strings.Contains(ci.UserData, key1) {
		t.Fatalf("cloud-init: %+v", ci)
	}
	if spec.Domain.Devices.Interfaces[0].Masquerade == nil || spec.Networks[0].Pod == nil {
		t.Fatalf("network: %+v %+v", spec.Domain.Devices.Interfaces, spec.Networks)
	}
}

func TestBuildISOInstallBootOrder(t *testing.T) {
	p := build(t, CreateOptions{Name: "win", CDROMs: []DiskRef{{Kind: "dv", Name: "win-iso"}}, DataDisks: []string{"64Gi"}, InstanceType: "u1.xlarge", Preference: "windows.2k22"})
	vm := vmOf(t, p)
	disks := vm.Spec.Template.Spec.Domain.Devices.Disks
	if disks[0].Name != "cdrom1" || *disks[0].BootOrder != 1 || disks[1].Name != "data1" || *disks[1].BootOrder != 2 {
		t.Fatalf("boot order: %+v", disks)
	}
	if vm.Spec.Instancetype.Name != "u1.xlarge" || vm.Spec.Preference.Name != "windows.2k22" || vm.Spec.Template.Spec.Domain.CPU != nil {
		t.Fatalf("instancetype: %+v %+v %+v", vm.Spec.Instancetype, vm.Spec.Preference, vm.Spec.Template.Spec.Domain.CPU)
	}
}

func TestBuildLargeUserDataGoesToSecret(t *testing.T) {
	ud := "#cloud-config\nwrite_files:\n  - path: /etc/motd\n    content: " + strings.Repeat("x", 3000) + "\n"
	p := build(t, CreateOptions{Name: "web", Disk: &DiskRef{Kind: "pvc", Name: "root"}, CloudInit: ud})
	if len(p.Objects) != 2 {
		t.Fatalf("%d objects, want secret + vm", len(p.Objects))
	}
	sec := p.Objects[0].(*corev1.Secret)
	vm := vmOf(t, p)
	ci := vm.Spec.Template.Spec.Volumes[1].CloudInitNoCloud
	if sec.StringData["userdata"] != ud || ci.UserDataSecretRef == nil || ci.UserDataSecretRef.Name != sec.Name || ci.UserData != "" {
		t.Fatalf("secret %+v, volume %+v", sec, ci)
	}
	if vm.Spec.Template.Spec.Volumes[0].PersistentVolumeClaim.ClaimName != "root" {
		t.Fatalf("pvc volume: %+v", vm.Spec.Template.Spec.Volumes[0])
	}
}

func TestUserData(t *testing.T) {
	key2 := "ssh-rsa AAAAB3Nza other"
	tests := []struct {
		name, ud string
		keys     []string
		want     []string // substrings
		keysOnce []string
	}{
		{"keys only", "", []string{key1}, []string{"#cloud-config\n", "ssh_authorized_keys:", key1}, []string{key1}},
		{"merge", "#cloud-config\npackages:\n  - nginx\nssh_authorized_keys:\n  - " + key2 + "\n", []string{key1, key2}, []string{"#cloud-config\n", "nginx", key1, key2}, []string{key1, key2}},
		{"no keys", "#!/bin/sh\necho hi\n", nil, []string{"#!/bin/sh\necho hi\n"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := userData(tt.ud, tt.keys)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Fatalf("user data %q lacks %q", got, w)
				}
			}
			for _, k := range tt.keysOnce {
				if strings.Count(got, k) != 1 {
					t.Fatalf("key %q appears %d times in %q", k, strings.Count(got, k), got)
				}
			}
			if tt.keys != nil {
				var doc map[string]any
				if err := yaml.Unmarshal([]byte(got), &doc); err != nil {
					t.Fatalf("not YAML: %v", err)
				}
			}
		})
	}
}

func TestBuildCozystack(t *testing.T) {
	p := build(t, CreateOptions{Name: "web", Flavor: FlavorCozystack, Image: "ubuntu", DataDisks: []string{"10Gi"},
		CDROMs: []DiskRef{{Kind: "vmdisk", Name: "tools"}}, SSHKeys: []string{key1}, CloudInit: "#cloud-config\n"})
	if p.VMName != "vm-instance-web" || len(p.Objects) != 3 {
		t.Fatalf("plan: %s, %d objects", p.VMName, len(p.Objects))
	}
	root := p.Objects[0].(*unstructured.Unstructured)
	if root.GetKind() != "VMDisk" || root.GetName() != "web-rootdisk" {
		t.Fatalf("root: %v", root.Object)
	}
	img, _, _ := unstructured.NestedString(root.Object, "spec", "source", "image", "name")
	size, _, _ := unstructured.NestedString(root.Object, "spec", "storage")
	if img != "ubuntu" || size != "20Gi" {
		t.Fatalf("root spec: %v", root.Object["spec"])
	}
	inst := p.Objects[2].(*unstructured.Unstructured)
	disks, _, _ := unstructured.NestedSlice(inst.Object, "spec", "disks")
	var names []string
	for _, d := range disks {
		names = append(names, d.(map[string]any)["name"].(string))
	}
	if strings.Join(names, ",") != "web-rootdisk,web-data1,tools" {
		t.Fatalf("instance disks %v", names)
	}
	it, _, _ := unstructured.NestedString(inst.Object, "spec", "instanceType")
	keys, _, _ := unstructured.NestedStringSlice(inst.Object, "spec", "sshKeys")
	if it != "u1.large" || len(keys) != 1 || keys[0] != key1 {
		t.Fatalf("instance spec: %v", inst.Object["spec"])
	}
}

func TestParseDiskRef(t *testing.T) {
	tests := []struct {
		in   string
		want DiskRef
		err  bool
	}{
		{"dv://root", DiskRef{Kind: "dv", Name: "root"}, false},
		{"dv://prod/root", DiskRef{Kind: "dv", Namespace: "prod", Name: "root"}, false},
		{"vmdisk://web", DiskRef{Kind: "vmdisk", Name: "web"}, false},
		{"pvc://a/b", DiskRef{Kind: "pvc", Namespace: "a", Name: "b"}, false},
		{"root", DiskRef{}, true},
		{"s3://b/k", DiskRef{}, true},
		{"dv://Prod/root", DiskRef{}, true},
		{"dv://", DiskRef{}, true},
	}
	for _, tt := range tests {
		got, err := ParseDiskRef(tt.in)
		if (err != nil) != tt.err || (!tt.err && got != tt.want) {
			t.Errorf("ParseDiskRef(%q) = %+v, %v", tt.in, got, err)
		}
		if !tt.err && got.String() != tt.in {
			t.Errorf("String() = %q, want %q", got.String(), tt.in)
		}
	}
}

func TestScheduleObjects(t *testing.T) {
	o := ScheduleOptions{
		Backup:   BackupOptions{VM: "web", To: "s3://b/p", Keep: 7},
		Schedule: "@daily", Image: "ghcr.io/hikube/ferry:1.0", S3Secret: "creds",
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	objs := ScheduleObjects(o, "prod", "web", []string{"web-root"}, []string{"legacy-pvc"})
	var kinds []string
	for _, obj := range objs {
		kinds = append(kinds, obj.GetObjectKind().GroupVersionKind().Kind+"/"+obj.GetName())
	}
	if got := strings.Join(kinds, ","); got != "ServiceAccount/ferry-backup-web,Role/ferry-backup-web,RoleBinding/ferry-backup-web,CronJob/ferry-backup-web" {
		t.Fatalf("objects %s", got)
	}
	y, err := yaml.Marshal(objs[3])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"schedule: '@daily'", "concurrencyPolicy: Forbid", "serviceAccountName: ferry-backup-web", "- --keep\n", "- \"7\"", "name: creds", "readOnlyRootFilesystem: true"} {
		if !strings.Contains(string(y), want) {
			t.Errorf("cronjob lacks %q:\n%s", want, y)
		}
	}
	bad := []ScheduleOptions{
		{Backup: BackupOptions{VM: "web", To: "s3://b/p"}, Schedule: "daily", Image: "i"},
		{Backup: BackupOptions{VM: "web", To: "s3://b/p"}, Schedule: "0 3 * * *"},
		{Backup: BackupOptions{VM: "web", To: "b/p"}, Schedule: "0 3 * * *", Image: "i"},
		{Backup: BackupOptions{VM: "web", To: "s3://b/p", Keep: -1}, Schedule: "0 3 * * *", Image: "i"},
	}
	for i, b := range bad {
		if err := b.Validate(); err == nil {
			t.Errorf("bad %d accepted", i)
		}
	}
}
