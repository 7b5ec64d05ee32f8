package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/hikube/ferry/pkg/lifecycle"
)

func newVMListCmd() *cobra.Command {
	var f vmFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the VMs of a namespace with their status, node and IPs",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			return vmRun(cmd.Context(), &f, func(ctx context.Context, lc *lifecycle.Client) ([]lifecycle.VMSummary, error) {
				vms, err := lc.List(ctx, f.namespace)
				if vms == nil && err == nil {
					vms = []lifecycle.VMSummary{} // [] in JSON, not null
				}
				return vms, err
			}, func(w io.Writer, vms []lifecycle.VMSummary) {
				var rows [][]string
				for _, v := range vms {
					ready := "False"
					if v.Ready {
						ready = "True"
					}
					rows = append(rows, []string{v.Name, v.Status, ready, orDash(v.Node), orDash(strings.Join(v.IPs, ",")), age(v.Created)})
				}
				table(w, "NAME\tSTATUS\tREADY\tNODE\tIP\tAGE", rows)
			})
		},
	}
	f.bind(cmd, false)
	return cmd
}

func newVMGetCmd() *cobra.Command {
	var f vmFlags
	cmd := &cobra.Command{
		Use:   "get NAME",
		Short: "Show a VM: status, node, IPs, disks and their phases",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return vmRun(cmd.Context(), &f, func(ctx context.Context, lc *lifecycle.Client) (*lifecycle.VMStatus, error) {
				return lc.Get(ctx, f.namespace, args[0])
			}, printStatus)
		},
	}
	f.bind(cmd, false)
	return cmd
}

func newVMPowerCmd(a lifecycle.Action) *cobra.Command {
	var (
		f     vmFlags
		wait  bool
		grace int64
	)
	short := map[lifecycle.Action]string{
		lifecycle.ActionStart:   "Start a VM",
		lifecycle.ActionStop:    "Stop a VM",
		lifecycle.ActionRestart: "Restart a VM",
	}[a]
	cmd := &cobra.Command{
		Use:   string(a) + " NAME",
		Short: short,
		Long: short + `, through KubeVirt's subresource API when the cluster serves it
(subresources.kubevirt.io, as virtctl does), otherwise by setting
spec.runStrategy (a Cozystack VM: its VMInstance's); a restart without the
subresource API deletes the VM's instance, which KubeVirt replaces.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return vmRun(cmd.Context(), &f, func(ctx context.Context, lc *lifecycle.Client) (*lifecycle.PowerResult, error) {
				o := lifecycle.PowerOptions{Namespace: f.namespace, Name: args[0], Wait: wait, Timeout: f.timeout}
				if cmd.Flags().Changed("grace-period") {
					o.GracePeriod = &grace
				}
				return lc.Power(ctx, a, o)
			}, func(w io.Writer, res *lifecycle.PowerResult) {
				if res.Via == lifecycle.ViaNothing {
					fmt.Fprintf(w, "vm %s/%s: nothing to do (already %s)\n", res.Namespace, res.Name, map[lifecycle.Action]string{lifecycle.ActionStart: "running", lifecycle.ActionStop: "stopped"}[a])
				} else {
					fmt.Fprintf(w, "vm %s/%s: %s requested (via %s)\n", res.Namespace, res.Name, a, res.Via)
				}
				if res.Status != nil {
					printStatus(w, res.Status)
				}
			})
		},
	}
	f.bind(cmd, true)
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the VM is Ready (start, restart) or stopped (stop)")
	if a != lifecycle.ActionStart {
		cmd.Flags().Int64Var(&grace, "grace-period", 0, "seconds the guest gets to shut down (subresource API only)")
	}
	return cmd
}

func newVMDeleteCmd() *cobra.Command {
	var (
		f    vmFlags
		keep bool
	)
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a VM and its disks (CD-ROMs are kept)",
		Long: `Delete a VM and its disks. --keep-disks keeps them (released from the VM so
the garbage collector leaves them): they can boot a new VM with --disk.
CD-ROM disks (ISOs, typically shared) are never deleted. A Cozystack VM is
deleted through its VMInstance and VMDisks.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return vmRun(cmd.Context(), &f, func(ctx context.Context, lc *lifecycle.Client) (*lifecycle.DeleteResult, error) {
				return lc.Delete(ctx, lifecycle.DeleteOptions{Namespace: f.namespace, Name: args[0], KeepDisks: keep})
			}, func(w io.Writer, res *lifecycle.DeleteResult) {
				fmt.Fprintf(w, "deleted %s\n", strings.Join(res.Deleted, ", "))
				if len(res.Kept) > 0 {
					fmt.Fprintf(w, "kept %s\n", strings.Join(res.Kept, ", "))
				}
			})
		},
	}
	f.bind(cmd, false)
	cmd.Flags().BoolVar(&keep, "keep-disks", false, "keep the VM's disks")
	return cmd
}

func newVMMigrateCmd() *cobra.Command {
	var (
		f    vmFlags
		wait bool
	)
	cmd := &cobra.Command{
		Use:   "migrate NAME",
		Short: "Live-migrate a running VM to another node",
		Long: `Live-migrate a running VM (a VirtualMachineInstanceMigration). A preflight
refuses a VM that is not running or has a disk that is not ReadWriteMany
(both nodes open it during the migration). With --wait, reports the source
and target nodes and how long the migration took.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return vmRun(cmd.Context(), &f, func(ctx context.Context, lc *lifecycle.Client) (*lifecycle.MigrationResult, error) {
				return lc.Migrate(ctx, lifecycle.MigrateOptions{Namespace: f.namespace, VM: args[0], Wait: wait, Timeout: f.timeout})
			}, func(w io.Writer, res *lifecycle.MigrationResult) {
				if !wait {
					fmt.Fprintf(w, "migration %s of vm %s/%s created (from %s)\n", res.Migration, res.Namespace, res.VM, orDash(res.SourceNode))
					return
				}
				secs := res.DurationSeconds
				if secs < 1 {
					secs = res.ObservedSeconds
				}
				fmt.Fprintf(w, "vm %s/%s migrated from %s to %s in %.1fs (%s)\n", res.Namespace, res.VM, orDash(res.SourceNode), orDash(res.TargetNode), secs, res.Migration)
			})
		},
	}
	f.bind(cmd, true)
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for the migration to finish")
	return cmd
}
