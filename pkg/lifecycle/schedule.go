package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// BackupRules is the least privilege `ferry vm backup VM` needs in the
// VM's namespace: read the VM, its instance and its disks (by name),
// create/read/delete its snapshot and export, create the export's token
// Secret (ferry never reads secrets). claims are the VM's DataVolume
// (dv) and PersistentVolumeClaim (pvc) disks.
func BackupRules(vm string, dvs, pvcs []string) []rbacv1.PolicyRule {
	rules := []rbacv1.PolicyRule{
		{APIGroups: []string{"kubevirt.io"}, Resources: []string{"virtualmachines", "virtualmachineinstances"}, ResourceNames: []string{vm}, Verbs: []string{"get"}},
		{APIGroups: []string{"snapshot.kubevirt.io"}, Resources: []string{"virtualmachinesnapshots"}, Verbs: []string{"create", "get", "delete"}},
		{APIGroups: []string{"export.kubevirt.io"}, Resources: []string{"virtualmachineexports"}, Verbs: []string{"create", "get", "delete"}},
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create"}},
	}
	if len(dvs) > 0 {
		rules = append(rules, rbacv1.PolicyRule{APIGroups: []string{"cdi.kubevirt.io"}, Resources: []string{"datavolumes"}, ResourceNames: dvs, Verbs: []string{"get"}})
	}
	if len(pvcs) > 0 {
		rules = append(rules, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"persistentvolumeclaims"}, ResourceNames: pvcs, Verbs: []string{"get"}})
	}
	return rules
}

// UserRules is what a user of every `ferry vm` command needs in a
// namespace (documented in the README; the tests' user has exactly this
// plus ferry import's rules).
var UserRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"kubevirt.io"}, Resources: []string{"virtualmachines"}, Verbs: []string{"get", "list", "create", "patch", "delete"}},
	{APIGroups: []string{"kubevirt.io"}, Resources: []string{"virtualmachineinstances"}, Verbs: []string{"get", "list", "delete"}},
	{APIGroups: []string{"kubevirt.io"}, Resources: []string{"virtualmachineinstancemigrations"}, Verbs: []string{"create", "get"}},
	{APIGroups: []string{"subresources.kubevirt.io"}, Resources: []string{"virtualmachines/start", "virtualmachines/stop", "virtualmachines/restart"}, Verbs: []string{"update"}},
	{APIGroups: []string{"snapshot.kubevirt.io"}, Resources: []string{"virtualmachinesnapshots", "virtualmachinerestores"}, Verbs: []string{"get", "list", "create", "delete"}},
	{APIGroups: []string{"export.kubevirt.io"}, Resources: []string{"virtualmachineexports"}, Verbs: []string{"get", "create", "delete"}},
	{APIGroups: []string{"cdi.kubevirt.io"}, Resources: []string{"datavolumes"}, Verbs: []string{"get", "list", "create", "patch", "delete"}},
	{APIGroups: []string{"cdi.kubevirt.io"}, Resources: []string{"datasources"}, Verbs: []string{"get"}},
	{APIGroups: []string{"cdi.kubevirt.io"}, Resources: []string{"datavolumes/source"}, Verbs: []string{"create"}},
	{APIGroups: []string{"apps.cozystack.io"}, Resources: []string{"vminstances", "vmdisks"}, Verbs: []string{"get", "create", "patch", "delete"}},
	{APIGroups: []string{""}, Resources: []string{"persistentvolumeclaims"}, Verbs: []string{"get", "delete"}},
	// Secrets: export tokens and cloud-init user data (create), ownership
	// of the latter (patch); the schedule's S3 credentials (update on a
	// re-run, delete on --unschedule). ferry never reads a secret.
	{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create", "patch", "update", "delete"}},
	// --schedule installs a CronJob and its least-privilege identity;
	// --unschedule removes them.
	{APIGroups: []string{""}, Resources: []string{"serviceaccounts"}, Verbs: []string{"get", "create", "update", "delete"}},
	{APIGroups: []string{"rbac.authorization.k8s.io"}, Resources: []string{"roles", "rolebindings"}, Verbs: []string{"get", "create", "update", "delete"}},
	{APIGroups: []string{"batch"}, Resources: []string{"cronjobs"}, Verbs: []string{"get", "create", "update", "delete"}},
}

// ScheduleOptions configure ScheduleBackup.
type ScheduleOptions struct {
	Backup BackupOptions
	// Schedule is a cron expression (CronJob syntax).
	Schedule string
	// Image runs ferry (its entrypoint is the ferry binary).
	Image string
	// S3Secret names a Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
	// and optionally AWS_ENDPOINT_URL, AWS_REGION, passed to the job as
	// environment. Empty: one is created from this process's AWS_*
	// variables.
	S3Secret string
	// TimeZone of the schedule (CronJob spec.timeZone), e.g. Europe/Zurich.
	TimeZone string
}

// Validate checks the options.
func (o *ScheduleOptions) Validate() error {
	if err := o.Backup.Validate(); err != nil {
		return err
	}
	f := strings.Fields(o.Schedule)
	if len(f) != 5 && !(len(f) == 1 && strings.HasPrefix(f[0], "@")) {
		return fmt.Errorf("--schedule %q: want a cron expression (5 fields, e.g. \"0 3 * * *\") or @daily/@hourly/…", o.Schedule)
	}
	if o.Image == "" {
		return errors.New("--job-image: no image")
	}
	if o.S3Secret != "" {
		return checkName("--s3-secret", o.S3Secret)
	}
	return nil
}

// ScheduleResult reports what ScheduleBackup installed.
type ScheduleResult struct {
	Namespace      string   `json:"namespace"`
	CronJob        string   `json:"cronJob"`
	ServiceAccount string   `json:"serviceAccount"`
	Role           string   `json:"role"`
	S3Secret       string   `json:"s3Secret"`
	Command        []string `json:"command"`
	// Objects are Kind/name, created or updated.
	Objects []string `json:"objects"`
}

// ScheduleName is the name of the CronJob, ServiceAccount, Role and
// RoleBinding backing up vm.
func ScheduleName(vm string) string { return "ferry-backup-" + vm }

// ScheduleObjects builds the CronJob that runs `ferry vm backup` in the
// cluster, and its ServiceAccount, Role (BackupRules) and RoleBinding.
// It is pure: --dry-run prints it.
func ScheduleObjects(o ScheduleOptions, ns, vm string, dvs, pvcs []string) []client.Object {
	name := ScheduleName(vm)
	labels := managedLabels(vm)
	meta := metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels}
	args := []string{"vm", "backup", vm, "--namespace", ns, "--to", o.Backup.To, "--link", string(o.Backup.Link), "--output", "json"}
	if o.Backup.Keep > 0 {
		args = append(args, "--keep", strconv.Itoa(o.Backup.Keep))
	}
	if o.Backup.S3.PathStyle {
		args = append(args, "--s3-path-style")
	}
	var env []corev1.EnvVar
	if o.Backup.S3.Endpoint != "" {
		env = append(env, corev1.EnvVar{Name: "AWS_ENDPOINT_URL", Value: o.Backup.S3.Endpoint})
	}
	if o.Backup.S3.Region != "" {
		env = append(env, corev1.EnvVar{Name: "AWS_REGION", Value: o.Backup.S3.Region})
	}
	cj := &batchv1.CronJob{
		TypeMeta:   metav1.TypeMeta{APIVersion: "batch/v1", Kind: "CronJob"},
		ObjectMeta: meta,
		Spec: batchv1.CronJobSpec{
			Schedule: o.Schedule,
			// One backup at a time: a slow one is not overtaken.
			ConcurrencyPolicy:          batchv1.ForbidConcurrent,
			SuccessfulJobsHistoryLimit: ptr(int32(3)),
			FailedJobsHistoryLimit:     ptr(int32(3)),
			JobTemplate: batchv1.JobTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: batchv1.JobSpec{
					BackoffLimit: ptr(int32(2)),
					Template: corev1.PodTemplateSpec{
						ObjectMeta: metav1.ObjectMeta{Labels: labels},
						Spec: corev1.PodSpec{
							ServiceAccountName: name,
							RestartPolicy:      corev1.RestartPolicyNever,
							SecurityContext:    &corev1.PodSecurityContext{RunAsNonRoot: ptr(true), SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
							Containers: []corev1.Container{{
								Name:    "backup",
								Image:   o.Image,
								Args:    args,
								Env:     env,
								EnvFrom: []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: o.S3Secret}}}},
								Resources: corev1.ResourceRequirements{
									Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("256Mi")},
									// Part buffers and the fetch cache: ~300 MiB at most.
									Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("768Mi")},
								},
								SecurityContext: &corev1.SecurityContext{
									AllowPrivilegeEscalation: ptr(false),
									ReadOnlyRootFilesystem:   ptr(true),
									Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
								},
							}},
						},
					},
				},
			},
		},
	}
	if o.TimeZone != "" {
		cj.Spec.TimeZone = ptr(o.TimeZone)
	}
	return []client.Object{
		&corev1.ServiceAccount{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"}, ObjectMeta: meta},
		&rbacv1.Role{TypeMeta: metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"}, ObjectMeta: meta, Rules: BackupRules(vm, dvs, pvcs)},
		&rbacv1.RoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"},
			ObjectMeta: meta,
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
		},
		cj,
	}
}

// vmClaims splits a VM's disks into DataVolume and PVC names.
func (c *Client) vmClaims(ctx context.Context, ns, name string) (vm string, dvs, pvcs []string, err error) {
	v, _, err := c.resolveVM(ctx, ns, name)
	if err != nil {
		return "", nil, nil, err
	}
	disks, err := c.disks(ctx, ns, v)
	if err != nil {
		return "", nil, nil, err
	}
	for _, d := range disks {
		switch d.Kind {
		case "dataVolume":
			dvs = append(dvs, d.Claim)
		case "persistentVolumeClaim":
			pvcs = append(pvcs, d.Claim)
		}
	}
	return v.Name, dvs, pvcs, nil
}

// PlanSchedule resolves the VM and returns the objects ScheduleBackup
// would write (for --dry-run).
func (c *Client) PlanSchedule(ctx context.Context, o ScheduleOptions) ([]client.Object, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	ns := c.ns(o.Backup.Namespace)
	vm, dvs, pvcs, err := c.vmClaims(ctx, ns, o.Backup.VM)
	if err != nil {
		return nil, fmt.Errorf("schedule backup of vm %s/%s: %w", ns, o.Backup.VM, err)
	}
	if o.S3Secret == "" {
		o.S3Secret = ScheduleName(vm) + "-s3"
	}
	return ScheduleObjects(o, ns, vm, dvs, pvcs), nil
}

// ScheduleBackup installs (or updates) the CronJob backing up a VM.
func (c *Client) ScheduleBackup(ctx context.Context, o ScheduleOptions) (*ScheduleResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	ns := c.ns(o.Backup.Namespace)
	fail := func(stage string, err error) error {
		return fmt.Errorf("schedule backup of vm %s/%s: %s: %w", ns, o.Backup.VM, stage, err)
	}
	vm, dvs, pvcs, err := c.vmClaims(ctx, ns, o.Backup.VM)
	if err != nil {
		return nil, fail("get VirtualMachine", err)
	}
	res := &ScheduleResult{Namespace: ns, CronJob: ScheduleName(vm), ServiceAccount: ScheduleName(vm), Role: ScheduleName(vm)}
	if o.S3Secret == "" {
		// Credentials from this environment, stored for the job.
		s := o.Backup.S3.WithEnv()
		if s.AccessKey == "" || s.SecretKey == "" {
			return nil, fail("s3 credentials", errors.New("no --s3-secret and no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY to store in one"))
		}
		o.S3Secret = ScheduleName(vm) + "-s3"
		data := map[string]string{"AWS_ACCESS_KEY_ID": s.AccessKey, "AWS_SECRET_ACCESS_KEY": s.SecretKey}
		if s.SessionToken != "" {
			data["AWS_SESSION_TOKEN"] = s.SessionToken
		}
		if o.Backup.S3.Endpoint == "" && s.Endpoint != "" {
			o.Backup.S3.Endpoint = s.Endpoint
		}
		if o.Backup.S3.Region == "" && s.Region != "" {
			o.Backup.S3.Region = s.Region
		}
		secret := &corev1.Secret{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
			ObjectMeta: metav1.ObjectMeta{Name: o.S3Secret, Namespace: ns, Labels: managedLabels(vm)},
			Type:       corev1.SecretTypeOpaque, StringData: data,
		}
		if err := c.apply(ctx, secret); err != nil {
			return nil, fail("secret "+o.S3Secret, err)
		}
		res.Objects = append(res.Objects, "Secret/"+o.S3Secret)
	}
	res.S3Secret = o.S3Secret
	for _, obj := range ScheduleObjects(o, ns, vm, dvs, pvcs) {
		kind := obj.GetObjectKind().GroupVersionKind().Kind
		if err := c.apply(ctx, obj); err != nil {
			return res, fail(kind+" "+obj.GetName(), err)
		}
		res.Objects = append(res.Objects, kind+"/"+obj.GetName())
		if cj, ok := obj.(*batchv1.CronJob); ok {
			res.Command = append([]string{"ferry"}, cj.Spec.JobTemplate.Spec.Template.Spec.Containers[0].Args...)
		}
	}
	return res, nil
}

// apply creates obj, or replaces an existing one's spec-like fields
// (get + update: no server-side apply, so plain RBAC verbs suffice).
func (c *Client) apply(ctx context.Context, obj client.Object) error {
	err := c.Kube.Create(ctx, obj)
	if err == nil || !apierrors.IsAlreadyExists(err) {
		return err
	}
	if sec, ok := obj.(*corev1.Secret); ok {
		// Overwrite without reading it: ferry never reads secrets.
		patch, err := json.Marshal(map[string]any{"stringData": sec.StringData})
		if err != nil {
			return err
		}
		return c.Kube.Patch(ctx, sec, client.RawPatch(types.MergePatchType, patch))
	}
	cur := obj.DeepCopyObject().(client.Object)
	if err := c.Kube.Get(ctx, types.NamespacedName{Namespace: obj.GetNamespace(), Name: obj.GetName()}, cur); err != nil {
		return err
	}
	if sa, ok := obj.(*corev1.ServiceAccount); ok {
		// Keep token secrets and image pull secrets Kubernetes added.
		sa.Secrets, sa.ImagePullSecrets = cur.(*corev1.ServiceAccount).Secrets, cur.(*corev1.ServiceAccount).ImagePullSecrets
	}
	if rb, ok := obj.(*rbacv1.RoleBinding); ok && !equalRoleRef(rb.RoleRef, cur.(*rbacv1.RoleBinding).RoleRef) {
		return fmt.Errorf("rolebinding %s exists with another roleRef: delete it first", rb.Name)
	}
	obj.SetResourceVersion(cur.GetResourceVersion())
	obj.SetUID(cur.GetUID())
	return c.Kube.Update(ctx, obj)
}

func equalRoleRef(a, b rbacv1.RoleRef) bool { return a == b }

// Unschedule removes what ScheduleBackup installed (the S3 secret only
// when ferry created it).
func (c *Client) Unschedule(ctx context.Context, ns, vm string) ([]string, error) {
	ns = c.ns(ns)
	name := ScheduleName(vm)
	var done []string
	objs := []struct {
		kind string
		obj  client.Object
	}{
		{"CronJob", &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}},
		{"RoleBinding", &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}},
		{"Role", &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}},
		{"ServiceAccount", &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}},
		{"Secret", &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-s3"}}},
	}
	for _, o := range objs {
		if err := c.Kube.Delete(ctx, o.obj, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return done, fmt.Errorf("unschedule backup of vm %s/%s: delete %s %s: %w", ns, vm, o.kind, o.obj.GetName(), err)
		}
		done = append(done, o.kind+"/"+o.obj.GetName())
	}
	return done, nil
}
