package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	exportv1 "kubevirt.io/api/export/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hikube/ferry/pkg/lifecycle"
	"github.com/hikube/ferry/pkg/progress"
)

func newVMBackupCmd() *cobra.Command {
	var (
		f                           vmFlags
		o                           lifecycle.BackupOptions
		link                        string
		schedule, image, secret, tz string
		dryRun, unschedule          bool
	)
	cmd := &cobra.Command{
		Use:   "backup NAME --to s3://BUCKET/PREFIX",
		Short: "Back up a VM's disks to S3 (now, or on a schedule in the cluster)",
		Long: `Export a VM's disks (VirtualMachineExport; a running VM is snapshotted
first) and stream each to S3 as RAW, recording its SHA-256, then write
SHA256SUMS and manifest.json (VM spec, disks, digests, times) under
s3://BUCKET/PREFIX/NAME/STAMP/. The manifest is written last: a directory
without one is not a backup. --keep N prunes older backups afterwards.

--schedule CRON installs a CronJob instead that runs this command in the
cluster, with a ServiceAccount and a Role granting only what a backup
needs. S3 credentials come from --s3-secret (a Secret with
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY…) or, without it, from this
shell's AWS_* variables, stored in a Secret for the job.

Restore a disk with: ferry import s3://…/STAMP/VOLUME.raw dv://NAME
(checksum in SHA256SUMS); a whole VM with: ferry vm restore-backup.`,
		Example: `  ferry vm backup web --to s3://backups/hikube
  ferry vm backup web --to s3://backups/hikube --schedule "0 3 * * *" --keep 7`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			o.Namespace, o.VM, o.Link, o.Timeout, o.Version = f.namespace, args[0], exportv1.ExportVolumeFormat(link), f.timeout, version
			if unschedule {
				lc, err := f.client()
				if err != nil {
					return err
				}
				done, err := lc.Unschedule(cmd.Context(), f.namespace, args[0])
				if err != nil {
					return err
				}
				return f.emit(os.Stdout, done, func(w io.Writer) { fmt.Fprintf(w, "removed %s\n", orDash(strings.Join(done, ", "))) })
			}
			if o.To == "" {
				return usageError{errors.New("vm backup: --to s3://BUCKET/PREFIX is required")}
			}
			if err := o.Validate(); err != nil {
				return usageError{fmt.Errorf("vm backup: %w", err)}
			}
			so := lifecycle.ScheduleOptions{Backup: o, Schedule: schedule, Image: image, S3Secret: secret, TimeZone: tz}
			if schedule != "" {
				if err := so.Validate(); err != nil {
					return usageError{fmt.Errorf("vm backup: %w", err)}
				}
			} else if dryRun {
				return usageError{errors.New("vm backup: --dry-run applies to --schedule")}
			}
			lc, err := f.client()
			if err != nil {
				return err
			}
			if schedule != "" {
				if dryRun {
					objs, err := lc.PlanSchedule(cmd.Context(), so)
					if err != nil {
						return err
					}
					return printYAMLObjects(os.Stdout, objs)
				}
				res, err := lc.ScheduleBackup(cmd.Context(), so)
				if err != nil {
					return err
				}
				return f.emit(os.Stdout, res, func(w io.Writer) {
					fmt.Fprintf(w, "scheduled backup of vm %s/%s (%s): CronJob %s runs: %s\n", res.Namespace, args[0], schedule, res.CronJob, strings.Join(res.Command, " "))
					fmt.Fprintf(w, "installed %s\n", strings.Join(res.Objects, ", "))
				})
			}
			m := &meter{stage: "backup"}
			o.Progress = &progress.Counter{}
			stopMeter := mirror(o.Progress, m)
			r := startProgress(m, f.quiet || f.output != "")
			res, err := lc.Backup(cmd.Context(), o)
			stopMeter()
			r.Stop()
			if res != nil {
				f.warn(res.Warnings...)
			}
			if err != nil {
				if res != nil {
					f.emit(os.Stdout, res, nil)
				}
				return err
			}
			return f.emit(os.Stdout, res, func(w io.Writer) {
				fmt.Fprintf(w, "backed up vm %s/%s to %s\n", res.Manifest.Namespace, res.Manifest.VM, res.Location)
				for _, d := range res.Manifest.Disks {
					fmt.Fprintf(w, "  %s (%s): %s sha256:%s\n", d.Volume, d.Claim, humanBytes(d.Bytes), d.SHA256)
				}
				for _, p := range res.Pruned {
					fmt.Fprintf(w, "pruned %s\n", p)
				}
			})
		},
	}
	f.bind(cmd, false)
	fl := cmd.Flags()
	fl.DurationVar(&f.timeout, "timeout", 0, "how long to wait for the snapshot and the export to be ready (default 10m)")
	fl.StringVar(&o.To, "to", "", "s3://BUCKET/PREFIX")
	fl.IntVar(&o.Keep, "keep", 0, "after a backup, keep only the newest N backups of the VM (0: keep all)")
	fl.StringVar(&link, "link", "raw", "export link fetched: raw (resumable) or gzip (less traffic)")
	fl.StringVar(&o.S3.Endpoint, "s3-endpoint", "", "S3 endpoint (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, AWS)")
	fl.StringVar(&o.S3.Region, "s3-region", "", "S3 region (default: $AWS_REGION)")
	fl.BoolVar(&o.S3.PathStyle, "s3-path-style", false, "path-style bucket addressing (MinIO, Ceph)")
	fl.StringVar(&schedule, "schedule", "", "install a CronJob with this cron schedule instead of backing up now")
	fl.StringVar(&tz, "time-zone", "", "time zone of --schedule (e.g. Europe/Zurich; default: the controller's)")
	fl.StringVar(&image, "job-image", defaultJobImage(), "ferry image the CronJob runs")
	fl.StringVar(&secret, "s3-secret", "", "Secret with the job's AWS_* credentials (default: one made from this shell's)")
	fl.BoolVar(&dryRun, "dry-run", false, "with --schedule: print the objects instead of creating them")
	fl.BoolVar(&unschedule, "unschedule", false, "remove the CronJob and its ServiceAccount, Role, RoleBinding and Secret")
	return cmd
}

func defaultJobImage() string {
	if version == "dev" || version == "" {
		return "ghcr.io/hikube/ferry:latest"
	}
	return "ghcr.io/hikube/ferry:" + strings.TrimPrefix(version, "v")
}

// mirror copies a library counter into a meter until stopped.
func mirror(c *progress.Counter, m *meter) func() {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			d, t := c.Load()
			m.done.Store(d)
			if t > 0 {
				m.total.Store(t)
			}
			select {
			case <-done:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return func() { close(done); <-stopped }
}

func newVMRestoreBackupCmd() *cobra.Command {
	var (
		f      vmFlags
		o      lifecycle.RestoreBackupOptions
		dryRun bool
	)
	cmd := &cobra.Command{
		Use:   "restore-backup s3://BUCKET/PREFIX/VM[/STAMP]",
		Short: "Recreate a VM from a backup (its disks imported, its spec reapplied)",
		Long: `Recreate a VM from a ferry backup: each disk is imported into a new
DataVolume NAME-VOLUME (its SHA-256 checked against the manifest), then the
VM is created from the recorded spec with its volumes on them. Give the
backup directory (…/VM/STAMP), its manifest.json, or the VM's directory
(…/VM: the newest complete backup).`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			o.Backup, o.Namespace, o.DryRun = args[0], f.namespace, dryRun
			o.Import = backupImporter(&f, o.S3)
			if err := o.Validate(); err != nil {
				return usageError{fmt.Errorf("vm restore-backup: %w", err)}
			}
			lc, err := f.client()
			if err != nil {
				return err
			}
			res, err := lc.RestoreBackup(cmd.Context(), o)
			if err != nil {
				return err
			}
			if dryRun {
				if f.output == "json" {
					return f.emit(os.Stdout, res.Plan, nil)
				}
				return printYAMLObjects(os.Stdout, []client.Object{res.Plan})
			}
			return f.emit(os.Stdout, res, func(w io.Writer) {
				fmt.Fprintf(w, "restored vm %s/%s from %s\n", res.Namespace, res.VM, res.Backup)
				for v, dv := range res.Disks {
					fmt.Fprintf(w, "  %s → dv://%s/%s\n", v, res.Namespace, dv)
				}
			})
		},
	}
	f.bind(cmd, false)
	cmd.Flags().StringVar(&o.Name, "name", "", "name of the new VM (default: the backed-up VM's)")
	cmd.Flags().StringVar(&o.RunStrategy, "run-strategy", "", "run strategy of the new VM (default: as backed up)")
	cmd.Flags().StringVar(&o.S3.Endpoint, "s3-endpoint", "", "S3 endpoint (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, AWS)")
	cmd.Flags().BoolVar(&o.S3.PathStyle, "s3-path-style", false, "path-style bucket addressing")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the VM that would be created; import nothing")
	return cmd
}
