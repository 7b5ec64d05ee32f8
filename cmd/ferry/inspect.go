package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/pkg/pipeline"
)

func newInspectCmd() *cobra.Command {
	var output string
	var src sourceFlags
	cmd := &cobra.Command{
		Use:   "inspect SRC",
		Short: "Describe a disk image (like qemu-img info)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "" && output != "json" {
				return usageError{fmt.Errorf("--output %q: only json is supported", output)}
			}
			fo, err := src.options(nil)
			if err != nil {
				return err
			}
			rep, err := pipeline.Inspect(cmd.Context(), args[0], pipeline.InputOptions{Fetch: fo, Format: src.format, AllowDir: src.allowDir})
			if err != nil {
				return err
			}
			if output == "json" {
				return printJSON(os.Stdout, rep)
			}
			printReport(os.Stdout, rep)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json")
	src.register(cmd.Flags())
	return cmd
}

func printReport(w io.Writer, r *pipeline.InspectReport) {
	p := func(k string, v any) { fmt.Fprintf(w, "%-18s %v\n", k+":", v) }
	p("source", r.Source)
	if r.Wrapper != "" {
		p("compressed with", r.Wrapper)
	}
	for _, d := range r.OVADisks {
		p("ova disk", fmt.Sprintf("%s (%s)", d.Name, humanBytes(d.Size)))
	}
	if r.OVAManifest != "" {
		p("ova manifest", r.OVAManifest+" (checked on conversion)")
	}
	if r.OVADisk != "" {
		p("image in ova", r.OVADisk)
	}
	printInfo(w, "", r.Info, "")
}

func printInfo(w io.Writer, name string, in format.Info, indent string) {
	p := func(k string, v any) { fmt.Fprintf(w, "%s%-18s %v\n", indent, k+":", v) }
	if name != "" {
		p("image", name)
	}
	p("file format", in.Format)
	if in.Subformat != "" {
		p("subformat", in.Subformat)
	}
	if in.VirtualSize >= 0 {
		p("virtual size", fmt.Sprintf("%s (%d bytes)", humanBytes(in.VirtualSize), in.VirtualSize))
	} else {
		p("virtual size", "unknown until the stream is read")
	}
	p("file size", fmt.Sprintf("%s (%d bytes)", humanBytes(in.FileSize), in.FileSize))
	p("allocated bytes", fmt.Sprintf("%s (%d bytes)", humanBytes(in.AllocatedBytes), in.AllocatedBytes))
	if in.ClusterSize > 0 {
		p("cluster size", in.ClusterSize)
	}
	if in.Compression != "" {
		p("compression", in.Compression)
	}
	if in.Label != "" {
		p("volume label", in.Label)
	}
	if in.Backing != "" {
		b := in.Backing
		if in.BackingFormat != "" {
			b += " (format " + in.BackingFormat + ")"
		}
		p("backing file", b)
	}
	for i, e := range in.Extents {
		s := fmt.Sprintf("%s %d %s", e.Access, e.Sectors, e.Type)
		if e.File != "" {
			s += fmt.Sprintf(" %q", e.File)
		}
		if e.Offset != 0 {
			s += fmt.Sprintf(" %d", e.Offset)
		}
		p(fmt.Sprintf("extent %d", i), s)
	}
	if len(in.Details) > 0 {
		keys := make([]string, 0, len(in.Details))
		for k := range in.Details {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprintf(w, "%sdetails:\n", indent)
		for _, k := range keys {
			fmt.Fprintf(w, "%s  %-16s %v\n", indent, strings.ReplaceAll(k, "_", " ")+":", in.Details[k])
		}
	}
	if in.BackingInfo != nil {
		fmt.Fprintf(w, "%sbacking image:\n", indent)
		printInfo(w, in.Backing, *in.BackingInfo, indent+"  ")
	}
}
