package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/hikube/ferry/pkg/lifecycle"
)

func newVMCreateCmd() *cobra.Command {
	var (
		f                       vmFlags
		o                       lifecycle.CreateOptions
		disk, flavor, cloudInit string
		cdroms, sshKeys         []string
		dryRun, wait            bool
	)
	cmd := &cobra.Command{
		Use:   "create NAME (--disk dv://[NS/]NAME | --image NAME | --cdrom dv://…)",
		Short: "Create a VM that boots an imported disk or a clone of a golden image",
		Long: `Create a KubeVirt VirtualMachine (or, with --flavor cozystack, a Cozystack
VMInstance and its VMDisks).

--disk boots an existing DataVolume as is (dv://, or pvc://; vmdisk:// for
the cozystack flavor). --image clones a golden image: a dataVolumeTemplates
entry whose sourceRef is the CDI DataSource [NS/]NAME, on --storage-class
(default replicated) as Block + ReadWriteMany, so the VM can live-migrate.
--data-disk adds blank disks, --cdrom attaches ISOs (a VM with no --disk nor
--image boots its first CD-ROM, then its first data disk).

Sizing: --instancetype/--preference (cluster-wide kinds) or --cpu/--memory
(default 2 vCPU and 4Gi: Hikube advises at least 2 vCPU). --ssh-key and
--cloud-init reach the guest through a NoCloud volume.`,
		Example: `  ferry vm create web --image ubuntu-24.04 --size 30Gi --ssh-key ~/.ssh/id_ed25519.pub --wait
  ferry vm create legacy --disk dv://legacy-root --firmware efi --cpu 4 --memory 8Gi
  ferry vm create web --flavor cozystack --image ubuntu --ssh-key key.pub --dry-run`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			o.Name, o.Namespace, o.Flavor = args[0], f.namespace, lifecycle.Flavor(flavor)
			if disk != "" {
				d, err := lifecycle.ParseDiskRef(disk)
				if err != nil {
					return usageError{fmt.Errorf("--disk: %w", err)}
				}
				o.Disk = &d
			}
			for _, c := range cdroms {
				d, err := lifecycle.ParseDiskRef(c)
				if err != nil {
					return usageError{fmt.Errorf("--cdrom: %w", err)}
				}
				o.CDROMs = append(o.CDROMs, d)
			}
			for _, p := range sshKeys {
				b, err := os.ReadFile(p)
				if err != nil {
					return usageError{fmt.Errorf("--ssh-key: %w", err)}
				}
				for _, line := range strings.Split(string(b), "\n") {
					if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
						o.SSHKeys = append(o.SSHKeys, line)
					}
				}
			}
			if cloudInit != "" {
				b, err := os.ReadFile(cloudInit)
				if err != nil {
					return usageError{fmt.Errorf("--cloud-init: %w", err)}
				}
				o.CloudInit = string(b)
			}
			if err := o.Validate(); err != nil {
				return usageError{fmt.Errorf("vm create: %w", err)}
			}
			if dryRun {
				// No cluster needed: the namespace comes from the flag or
				// the kubeconfig when there is one.
				ns := o.Namespace
				if ns == "" {
					if lc, err := f.client(); err == nil {
						ns = lc.Namespace
					} else {
						ns = "default"
					}
				}
				plan, err := lifecycle.Build(o, ns)
				if err != nil {
					return err
				}
				if f.output == "json" {
					return f.emit(os.Stdout, plan.Objects, nil)
				}
				return printYAMLObjects(os.Stdout, plan.Objects)
			}
			lc, err := f.client()
			if err != nil {
				return err
			}
			res, err := lc.Create(cmd.Context(), o)
			if err != nil {
				return err
			}
			f.warn(res.Warnings...)
			if wait {
				st, err := lc.WaitReady(cmd.Context(), res.Namespace, res.VM, f.timeout)
				res.Status = st
				if err != nil {
					f.emit(os.Stdout, res, nil)
					return err
				}
			}
			return f.emit(os.Stdout, res, func(w io.Writer) {
				fmt.Fprintf(w, "created %s in %s\n", strings.Join(res.Created, ", "), res.Namespace)
				if res.Status != nil {
					printStatus(w, res.Status)
				}
			})
		},
	}
	f.bind(cmd, true)
	fl := cmd.Flags()
	fl.StringVar(&disk, "disk", "", "boot this existing disk as is: dv://[NS/]NAME, pvc://…, vmdisk://… (cozystack)")
	fl.StringVar(&o.Image, "image", "", "clone this golden image: CDI DataSource [NS/]NAME (cozystack: the image name)")
	fl.StringVar(&o.Size, "size", "", "size of the disk cloned from --image (default: the image's; cozystack: 20Gi)")
	fl.StringVar(&o.StorageClass, "storage-class", lifecycle.DefaultStorageClass, "storage class of new disks")
	fl.StringArrayVar(&o.DataDisks, "data-disk", nil, "add a blank data disk of this size (repeatable)")
	fl.StringArrayVar(&cdroms, "cdrom", nil, "attach an ISO disk as a CD-ROM: dv://[NS/]NAME (repeatable)")
	fl.StringVar(&o.InstanceType, "instancetype", "", "VirtualMachineClusterInstancetype (cozystack: instanceType; default u1.large)")
	fl.StringVar(&o.Preference, "preference", "", "VirtualMachineClusterPreference (cozystack: instanceProfile)")
	fl.Uint32Var(&o.CPU, "cpu", 0, "vCPUs (default 2 without --instancetype)")
	fl.StringVar(&o.Memory, "memory", "", "guest memory (default 4Gi without --instancetype)")
	fl.StringArrayVar(&sshKeys, "ssh-key", nil, "public key file to authorize (repeatable)")
	fl.StringVar(&cloudInit, "cloud-init", "", "cloud-init user-data file")
	fl.StringVar(&o.RunStrategy, "run-strategy", "Always", "Always, Halted, Manual, RerunOnFailure or Once")
	fl.StringVar(&o.Firmware, "firmware", "bios", "bios or efi")
	fl.StringVar(&flavor, "flavor", "kubevirt", "kubevirt (VirtualMachine) or cozystack (VMInstance + VMDisk)")
	fl.BoolVar(&dryRun, "dry-run", false, "print the objects as YAML instead of creating them")
	fl.BoolVar(&wait, "wait", false, "wait until the VM reports Ready")
	return cmd
}

func printStatus(w io.Writer, s *lifecycle.VMStatus) {
	ready := "no"
	if s.Ready {
		ready = "yes"
	}
	fmt.Fprintf(w, "vm %s/%s: %s (ready: %s", s.Namespace, s.Name, s.Status, ready)
	if s.RunStrategy != "" {
		fmt.Fprintf(w, ", run strategy %s", s.RunStrategy)
	}
	fmt.Fprintln(w, ")")
	if s.Instance != "" {
		fmt.Fprintf(w, "  cozystack instance: %s\n", s.Instance)
	}
	if s.Phase != "" {
		fmt.Fprintf(w, "  instance: %s on %s, IPs %s\n", s.Phase, orDash(s.Node), orDash(strings.Join(s.IPs, ", ")))
	}
	if s.Reason != "" {
		fmt.Fprintf(w, "  not ready: %s\n", s.Reason)
	}
	if len(s.Disks) > 0 {
		var rows [][]string
		for _, d := range s.Disks {
			kind := d.Kind
			if d.CDROM {
				kind += " (cdrom)"
			}
			rows = append(rows, []string{"  " + d.Volume, kind, orDash(d.Claim), orDash(d.Phase), orDash(d.Size), orDash(strings.Join(d.AccessModes, ",")), orDash(d.VolumeMode), orDash(d.StorageClass)})
		}
		table(w, "  VOLUME\tKIND\tCLAIM\tPHASE\tSIZE\tACCESS\tMODE\tCLASS", rows)
	}
}
