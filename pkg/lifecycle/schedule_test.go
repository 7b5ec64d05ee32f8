package lifecycle_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	exportv1 "kubevirt.io/api/export/v1beta1"
	snapshotv1 "kubevirt.io/api/snapshot/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hikube/ferry/internal/testpeer/kube"
	"github.com/hikube/ferry/pkg/lifecycle"
)

func TestBackupRulesShape(t *testing.T) {
	r := lifecycle.BackupRules("web", []string{"web-root"}, nil)
	for _, rule := range r {
		if slices.Contains(rule.Verbs, "list") || slices.Contains(rule.Verbs, "watch") || slices.Contains(rule.Verbs, "*") {
			t.Fatalf("broad verb in %+v", rule)
		}
		if slices.Contains(rule.Resources, "secrets") && !slices.Equal(rule.Verbs, []string{"create"}) {
			t.Fatalf("secrets: %v (ferry never reads secrets)", rule.Verbs)
		}
		if slices.Contains(rule.Resources, "persistentvolumeclaims") {
			t.Fatal("PVC rule without PVC disks")
		}
	}
}

// sar asks the real authorizer whether user may do verb on resource.
func sar(t *testing.T, c *kube.Cluster, user, verb, group, resource, name string) bool {
	t.Helper()
	r, err := c.Clientset.AuthorizationV1().SubjectAccessReviews().Create(t.Context(), &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + c.Namespace, "system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: c.Namespace, Verb: verb, Group: group, Resource: resource, Name: name},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r.Status.Allowed
}

// The CronJob's Role is enough for a backup, each of its permissions is
// needed, and nothing more is granted.
func TestScheduleRBAC(t *testing.T) {
	c, kv := cluster(t)
	lc := userClient(t, c)
	ctx := ctxT(t, 3*time.Minute)
	ns := c.Namespace
	srv, s3o := s3peer(t, "nightly")
	if err := kv.ImportedDisk(ctx, ns, "nightly-root", pattern(1<<20, 11), corev1.ReadWriteMany); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Create(ctx, lifecycle.CreateOptions{Name: "nightly", Disk: &lifecycle.DiskRef{Kind: "dv", Name: "nightly-root"}, DataDisks: []string{"1Gi"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.WaitReady(ctx, ns, "nightly", time.Minute); err != nil {
		t.Fatal(err)
	}
	so := lifecycle.ScheduleOptions{
		Backup:   lifecycle.BackupOptions{VM: "nightly", To: "s3://nightly/vms", Keep: 3, S3: s3o},
		Schedule: "0 3 * * *", Image: "ghcr.io/hikube/ferry:test", TimeZone: "Europe/Zurich",
	}
	// Installed by the least-privilege user (RBAC lets it grant only what
	// it holds), twice: the second run updates.
	var res *lifecycle.ScheduleResult
	for range 2 {
		var err error
		if res, err = lc.ScheduleBackup(ctx, so); err != nil {
			t.Fatal(err)
		}
	}
	if res.CronJob != "ferry-backup-nightly" || res.S3Secret != "ferry-backup-nightly-s3" || len(res.Objects) != 5 {
		t.Fatalf("schedule %+v", res)
	}
	cmd := strings.Join(res.Command, " ")
	if cmd != "ferry vm backup nightly --namespace "+ns+" --to s3://nightly/vms --link raw --output json --keep 3 --s3-path-style" {
		t.Fatalf("command %q", cmd)
	}
	k := admin(c)
	cj := &batchv1.CronJob{}
	if err := k.Get(ctx, types.NamespacedName{Namespace: ns, Name: "ferry-backup-nightly"}, cj); err != nil {
		t.Fatal(err)
	}
	pod := cj.Spec.JobTemplate.Spec.Template.Spec
	if cj.Spec.Schedule != "0 3 * * *" || *cj.Spec.TimeZone != "Europe/Zurich" || cj.Spec.ConcurrencyPolicy != batchv1.ForbidConcurrent ||
		pod.ServiceAccountName != "ferry-backup-nightly" || pod.Containers[0].EnvFrom[0].SecretRef.Name != "ferry-backup-nightly-s3" || pod.Containers[0].Env[0].Value != srv.URL {
		t.Fatalf("cronjob %+v", cj.Spec)
	}
	sec := &corev1.Secret{}
	if err := k.Get(ctx, types.NamespacedName{Namespace: ns, Name: "ferry-backup-nightly-s3"}, sec); err != nil || string(sec.Data["AWS_ACCESS_KEY_ID"]) != srv.AccessKey {
		t.Fatalf("s3 secret: %v", err)
	}

	// Run the backup as the CronJob's ServiceAccount.
	sa := "system:serviceaccount:" + ns + ":ferry-backup-nightly"
	tok, err := c.Clientset.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "ferry-backup-nightly",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	saCfg := &rest.Config{Host: c.Admin.Host, TLSClientConfig: rest.TLSClientConfig{CAData: c.Admin.CAData}, BearerToken: tok.Status.Token}
	job := clientFor(t, saCfg, ns)
	backup := func(day int) error {
		job.Now = func() time.Time { return time.Date(2025, 12, day, 3, 0, 0, 0, time.UTC) }
		_, err := job.Backup(ctx, lifecycle.BackupOptions{VM: "nightly", To: "s3://nightly/vms", Keep: 3, S3: s3o, Retries: -1, Attempts: 1})
		return err
	}
	if err := backup(1); err != nil {
		t.Fatalf("backup as the CronJob's identity: %v", err)
	}
	noLeftovers(t, ctx, ns)

	// Nothing more: what a stolen job token must not do.
	denied := []struct{ verb, group, resource, name string }{
		{"get", "", "secrets", "ferry-backup-nightly-s3"},
		{"list", "", "secrets", ""},
		{"create", "", "pods", ""},
		{"delete", "kubevirt.io", "virtualmachines", "nightly"},
		{"patch", "kubevirt.io", "virtualmachines", "nightly"},
		{"create", "kubevirt.io", "virtualmachines", ""},
		{"get", "kubevirt.io", "virtualmachines", "another-vm"},
		{"list", "kubevirt.io", "virtualmachines", ""},
		{"delete", "cdi.kubevirt.io", "datavolumes", "nightly-root"},
		{"get", "cdi.kubevirt.io", "datavolumes", "another-disk"},
		{"create", "snapshot.kubevirt.io", "virtualmachinerestores", ""},
		{"update", "subresources.kubevirt.io", "virtualmachines/stop", "nightly"},
		{"create", "batch", "cronjobs", ""},
		{"escalate", "rbac.authorization.k8s.io", "roles", ""},
	}
	for _, d := range denied {
		if sar(t, c, sa, d.verb, d.group, d.resource, d.name) {
			t.Errorf("the backup identity may %s %s.%s %s", d.verb, d.resource, d.group, d.name)
		}
	}

	// Every permission is needed: without any one, the backup fails.
	role := &rbacv1.Role{}
	if err := k.Get(ctx, types.NamespacedName{Namespace: ns, Name: "ferry-backup-nightly"}, role); err != nil {
		t.Fatal(err)
	}
	full := role.DeepCopy().Rules
	type perm struct{ group, resource, verb, name string }
	var perms []perm
	for _, r := range full {
		for _, res := range r.Resources {
			for _, v := range r.Verbs {
				name := ""
				if len(r.ResourceNames) > 0 {
					name = r.ResourceNames[0]
				}
				perms = append(perms, perm{r.APIGroups[0], res, v, name})
			}
		}
	}
	setRules := func(rules []rbacv1.PolicyRule, p perm, allowed bool) {
		t.Helper()
		cur := &rbacv1.Role{}
		if err := k.Get(ctx, client.ObjectKeyFromObject(role), cur); err != nil {
			t.Fatal(err)
		}
		cur.Rules = rules
		if err := k.Update(ctx, cur); err != nil {
			t.Fatal(err)
		}
		// The authorizer's cache catches up.
		for deadline := time.Now().Add(10 * time.Second); sar(t, c, sa, p.verb, p.group, p.resource, p.name) != allowed; {
			if time.Now().After(deadline) {
				t.Fatalf("role update not seen for %+v", p)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for i, p := range perms {
		var rules []rbacv1.PolicyRule
		for _, r := range full {
			r = *r.DeepCopy()
			if slices.Contains(r.APIGroups, p.group) && slices.Contains(r.Resources, p.resource) {
				if len(r.Resources) > 1 {
					r.Resources = slices.DeleteFunc(r.Resources, func(s string) bool { return s == p.resource })
					rules = append(rules, r, rbacv1.PolicyRule{APIGroups: r.APIGroups, Resources: []string{p.resource}, ResourceNames: r.ResourceNames,
						Verbs: slices.DeleteFunc(slices.Clone(r.Verbs), func(s string) bool { return s == p.verb })})
					continue
				}
				r.Verbs = slices.DeleteFunc(r.Verbs, func(s string) bool { return s == p.verb })
			}
			rules = append(rules, r)
		}
		rules = slices.DeleteFunc(rules, func(r rbacv1.PolicyRule) bool { return len(r.Verbs) == 0 || len(r.Resources) == 0 })
		setRules(rules, p, false)
		err := backup(2 + i)
		if err == nil {
			t.Errorf("backup succeeded without %s %s.%s: the Role grants more than needed", p.verb, p.resource, p.group)
		} else if !strings.Contains(err.Error(), "forbidden") {
			t.Errorf("without %s %s: %v (want a forbidden error)", p.verb, p.resource, err)
		} else {
			t.Logf("without %s %s.%s: %s", p.verb, p.resource, p.group, firstLine(err))
		}
		cleanBackupObjects(t, ctx, k, ns)
		setRules(full, p, true)
	}
	if err := backup(28); err != nil {
		t.Fatalf("backup with the full role again: %v", err)
	}

	done, err := lc.Unschedule(ctx, ns, "nightly")
	if err != nil || len(done) != 5 {
		t.Fatalf("unschedule %v %v", done, err)
	}
}

func firstLine(err error) string {
	s := err.Error()
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// cleanBackupObjects removes what a backup that could not clean up left.
func cleanBackupObjects(t *testing.T, ctx context.Context, k client.Client, ns string) {
	t.Helper()
	sel := client.HasLabels{"ferry.hikube.io/backup"}
	k.DeleteAllOf(ctx, &exportv1.VirtualMachineExport{}, client.InNamespace(ns), sel)
	k.DeleteAllOf(ctx, &snapshotv1.VirtualMachineSnapshot{}, client.InNamespace(ns), sel)
}

func ptr[T any](v T) *T { return &v }
