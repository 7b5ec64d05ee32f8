package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/hikube/ferry/pkg/lifecycle"
	"github.com/hikube/ferry/pkg/progress"
)

func newVerifyCmd() *cobra.Command {
	var (
		f      vmFlags
		digest string
	)
	cmd := &cobra.Command{
		Use:   "verify dv://[NS/]NAME --digest sha256:HEX",
		Short: "Check that a DataVolume holds exactly an image (by the SHA-256 of its RAW bytes)",
		Long: `Check that a DataVolume (or pvc://) holds exactly the image with the given
SHA-256 (of the RAW image: what ferry convert --digest and ferry import
report): the volume is exported (VirtualMachineExport of its claim), read
in full and hashed. For golden images used as test fixtures.

Exit status 1 with "digest mismatch" when it does not match.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			d, err := lifecycle.ParseDiskRef(args[0])
			if err != nil {
				return usageError{fmt.Errorf("verify: %w", err)}
			}
			if d.Namespace == "" {
				d.Namespace = f.namespace
			}
			o := lifecycle.VerifyOptions{Disk: d, Digest: digest, Timeout: f.timeout}
			if err := o.Validate(); err != nil {
				return usageError{fmt.Errorf("verify: %w", err)}
			}
			lc, err := f.client()
			if err != nil {
				return err
			}
			m := &meter{stage: "verify"}
			o.Progress = &progress.Counter{}
			stopMeter := mirror(o.Progress, m)
			r := startProgress(m, f.quiet || f.output != "")
			res, err := lc.Verify(cmd.Context(), o)
			stopMeter()
			r.Stop()
			if res != nil && (err == nil || errors.Is(err, lifecycle.ErrDigestMismatch)) {
				f.emit(os.Stdout, res, func(w io.Writer) {
					verdict := "matches"
					if !res.Match {
						verdict = "does NOT match"
					}
					fmt.Fprintf(w, "%s/%s %s %s (%s read, %s)\n", res.Namespace, res.Name, verdict, res.Expected, humanBytes(res.Bytes), res.Actual)
				})
			}
			return err
		},
	}
	f.bind(cmd, false)
	cmd.Flags().DurationVar(&f.timeout, "timeout", 0, "how long to wait for the export to be ready (default 10m)")
	cmd.Flags().StringVar(&digest, "digest", "", "expected sha256:HEX of the RAW image")
	return cmd
}
