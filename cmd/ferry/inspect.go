package main

import (
	"encoding/json"
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
	var output, fmtName, allowDir string
	cmd := &cobra.Command{
		Use:   "inspect SRC",
		Short: "Describe a disk image (like qemu-img info)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "" && output != "json" {
				return usageError{fmt.Errorf("--output %q: only json is supported", output)}
			}
			info, err := pipeline.Inspect(args[0], fmtName, allowDir)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			}
			printInfo(os.Stdout, args[0], info, "")
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json")
	cmd.Flags().StringVarP(&fmtName, "format", "f", "", "image format, skipping detection")
	cmd.Flags().StringVar(&allowDir, "allow-dir", "", "directory inside which referenced files may be followed (default: the image's directory)")
	return cmd
}

func printInfo(w io.Writer, name string, in format.Info, indent string) {
	p := func(k string, v any) { fmt.Fprintf(w, "%s%-18s %v\n", indent, k+":", v) }
	p("image", name)
	p("file format", in.Format)
	if in.Subformat != "" {
		p("subformat", in.Subformat)
	}
	p("virtual size", fmt.Sprintf("%s (%d bytes)", humanBytes(in.VirtualSize), in.VirtualSize))
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
