package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/hikube/ferry/pkg/lifecycle"
)

func newVMSnapshotCmd() *cobra.Command {
	var (
		f    vmFlags
		o    lifecycle.SnapshotOptions
		wait bool
	)
	cmd := &cobra.Command{
		Use:   "snapshot NAME",
		Short: "Snapshot a VM (VirtualMachineSnapshot)",
		Long: `Take a VirtualMachineSnapshot of a VM. With --wait, waits until it is
ReadyToUse and reports KubeVirt's indications: Online (taken while
running), NoGuestAgent (filesystems not frozen: crash-consistent),
GuestAgent (frozen: application-consistent), QuiesceFailed.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return vmRun(cmd.Context(), &f, func(ctx context.Context, lc *lifecycle.Client) (*lifecycle.SnapshotInfo, error) {
				o.Namespace, o.VM, o.Wait, o.Timeout = f.namespace, args[0], wait, f.timeout
				in, err := lc.Snapshot(ctx, o)
				if err == nil && wait {
					f.warn(in.Notes...)
				}
				return in, err
			}, func(w io.Writer, in *lifecycle.SnapshotInfo) {
				state := "created"
				if in.ReadyToUse {
					state = "ready"
				}
				fmt.Fprintf(w, "snapshot %s/%s of vm %s %s", in.Namespace, in.Name, in.VM, state)
				if len(in.Indications) > 0 {
					fmt.Fprintf(w, " (%s)", strings.Join(in.Indications, ", "))
				}
				fmt.Fprintln(w)
			})
		},
	}
	f.bind(cmd, true)
	cmd.Flags().StringVar(&o.Name, "name", "", "snapshot name (default NAME-YYYYMMDD-HHMMSS)")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the snapshot is ReadyToUse")
	return cmd
}

func newVMSnapshotsCmd() *cobra.Command {
	var f vmFlags
	cmd := &cobra.Command{
		Use:   "snapshots NAME",
		Short: "List a VM's snapshots",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return vmRun(cmd.Context(), &f, func(ctx context.Context, lc *lifecycle.Client) ([]lifecycle.SnapshotInfo, error) {
				list, err := lc.Snapshots(ctx, f.namespace, args[0])
				if list == nil && err == nil {
					list = []lifecycle.SnapshotInfo{} // [] in JSON, not null
				}
				return list, err
			}, func(w io.Writer, list []lifecycle.SnapshotInfo) {
				var rows [][]string
				for _, s := range list {
					ready, created := "False", "-"
					if s.ReadyToUse {
						ready = "True"
					}
					if s.Created != nil {
						created = s.Created.UTC().Format("2006-01-02T15:04:05Z")
					}
					rows = append(rows, []string{s.Name, s.Phase, ready, created, orDash(strings.Join(s.Indications, ","))})
				}
				table(w, "NAME\tPHASE\tREADY\tCREATED\tINDICATIONS", rows)
			})
		},
	}
	f.bind(cmd, false)
	return cmd
}

func newVMRestoreCmd() *cobra.Command {
	var (
		f    vmFlags
		o    lifecycle.RestoreOptions
		wait bool
	)
	cmd := &cobra.Command{
		Use:   "restore NAME --snapshot S",
		Short: "Restore a VM from one of its snapshots (VirtualMachineRestore)",
		Long: `Restore a VM from a snapshot. KubeVirt restores stopped VMs only: a running
VM is refused, unless --stop, which stops it, restores, waits for the
restore to complete and starts it again.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Snapshot == "" {
				return usageError{fmt.Errorf("vm restore: --snapshot is required (see ferry vm snapshots %s)", args[0])}
			}
			return vmRun(cmd.Context(), &f, func(ctx context.Context, lc *lifecycle.Client) (*lifecycle.RestoreResult, error) {
				o.Namespace, o.VM, o.Wait, o.Timeout = f.namespace, args[0], wait, f.timeout
				return lc.Restore(ctx, o)
			}, func(w io.Writer, res *lifecycle.RestoreResult) {
				state := "requested"
				if res.Complete {
					state = "complete"
				}
				fmt.Fprintf(w, "restore %s of vm %s/%s from snapshot %s %s", res.Restore, res.Namespace, res.VM, res.Snapshot, state)
				if res.Restarted {
					fmt.Fprint(w, " (stopped, restored, started again)")
				}
				fmt.Fprintln(w)
			})
		},
	}
	f.bind(cmd, true)
	cmd.Flags().StringVar(&o.Snapshot, "snapshot", "", "the snapshot to restore")
	cmd.Flags().StringVar(&o.Name, "name", "", "name of the VirtualMachineRestore")
	cmd.Flags().BoolVar(&o.Stop, "stop", false, "stop a running VM first, start it again afterwards")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for the restore to complete")
	return cmd
}
