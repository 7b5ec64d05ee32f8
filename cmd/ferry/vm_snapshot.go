package main

import (
	"fmt"
	"io"
	"os"
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
			if err := f.check(); err != nil {
				return err
			}
			lc, err := f.client()
			if err != nil {
				return err
			}
			o.Namespace, o.VM, o.Wait, o.Timeout = f.namespace, args[0], wait, f.timeout
			in, err := lc.Snapshot(cmd.Context(), o)
			if err != nil {
				if in != nil {
					f.emit(os.Stdout, in, nil)
				}
				return err
			}
			if wait {
				f.warn(in.Notes...)
			}
			return f.emit(os.Stdout, in, func(w io.Writer) {
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
			if err := f.check(); err != nil {
				return err
			}
			lc, err := f.client()
			if err != nil {
				return err
			}
			list, err := lc.Snapshots(cmd.Context(), f.namespace, args[0])
			if err != nil {
				return err
			}
			if list == nil {
				list = []lifecycle.SnapshotInfo{}
			}
			return f.emit(os.Stdout, list, func(w io.Writer) {
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
			if err := f.check(); err != nil {
				return err
			}
			if o.Snapshot == "" {
				return usageError{fmt.Errorf("vm restore: --snapshot is required (see ferry vm snapshots %s)", args[0])}
			}
			lc, err := f.client()
			if err != nil {
				return err
			}
			o.Namespace, o.VM, o.Wait, o.Timeout = f.namespace, args[0], wait, f.timeout
			res, err := lc.Restore(cmd.Context(), o)
			if err != nil {
				if res != nil {
					f.emit(os.Stdout, res, nil)
				}
				return err
			}
			return f.emit(os.Stdout, res, func(w io.Writer) {
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
