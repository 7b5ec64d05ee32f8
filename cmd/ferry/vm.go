package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"

	"github.com/hikube/ferry/pkg/kube"
	"github.com/hikube/ferry/pkg/lifecycle"
)

// vmFlags are the flags every lifecycle command takes: kubectl's cluster
// selection, the output format and the wait timeout.
type vmFlags struct {
	kubeconfig, context, namespace string
	output                         string
	timeout                        time.Duration
	quiet                          bool
}

func (f *vmFlags) bind(cmd *cobra.Command, wait bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
	fl.StringVar(&f.context, "context", "", "kubeconfig context")
	fl.StringVarP(&f.namespace, "namespace", "n", "", "namespace (default: the context's)")
	fl.StringVarP(&f.output, "output", "o", "", "output format: json or yaml (default: text)")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "no progress or advice on stderr")
	if wait {
		fl.DurationVar(&f.timeout, "timeout", 10*time.Minute, "how long --wait waits")
	}
}

func (f *vmFlags) check() error {
	switch f.output {
	case "", "json", "yaml":
		return nil
	}
	return usageError{fmt.Errorf("--output %q: want json or yaml", f.output)}
}

// lifecycleScheme is pkg/kube's scheme plus the KubeVirt snapshot and
// export types.
func lifecycleScheme() (*runtime.Scheme, error) {
	s := kube.Scheme()
	return s, lifecycle.AddToScheme(s)
}

var quietLogs sync.Once

// silenceLibraryLogs: client-go (klog) and controller-runtime log on
// their own ("Unexpected error when reading response body" when a wait
// is cancelled, "log.SetLogger(...) was never called"); ferry reports
// errors itself.
func silenceLibraryLogs() {
	quietLogs.Do(func() {
		klog.SetLogger(logr.Discard())
		ctrllog.SetLogger(logr.Discard())
	})
}

// client connects to the cluster the flags select.
func (f *vmFlags) client() (*lifecycle.Client, error) {
	silenceLibraryLogs()
	cfg, ns, err := kube.Config(kube.Options{Kubeconfig: f.kubeconfig, Context: f.context, Namespace: f.namespace, UserAgent: "ferry/" + version})
	if err != nil {
		return nil, err
	}
	s, err := lifecycleScheme()
	if err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	lc := &lifecycle.Client{Kube: c, Config: cfg, Namespace: ns, InCluster: inCluster(f.kubeconfig)}
	if d, err := time.ParseDuration(os.Getenv("FERRY_POLL_INTERVAL")); err == nil && d > 0 {
		lc.Poll = d
	}
	return lc, lc.Validate()
}

// inCluster: ferry runs in a pod without an explicit kubeconfig (the
// export's internal links resolve there only).
func inCluster(kubeconfig string) bool {
	return kubeconfig == "" && os.Getenv("KUBECONFIG") == "" && os.Getenv("KUBERNETES_SERVICE_HOST") != ""
}

// vmRun is what a vm subcommand does: check the flags, connect, act, and
// print the result. A result that comes with an error (a wait that timed
// out, a step that failed after others) is printed too, so that an
// --output json caller sees how far it got.
func vmRun[T any](ctx context.Context, f *vmFlags, act func(context.Context, *lifecycle.Client) (T, error), text func(io.Writer, T)) error {
	if err := f.check(); err != nil {
		return err
	}
	lc, err := f.client()
	if err != nil {
		return err
	}
	res, err := act(ctx, lc)
	if err != nil {
		if v := reflect.ValueOf(res); v.IsValid() && !(v.Kind() == reflect.Pointer && v.IsNil()) {
			f.emit(os.Stdout, res, nil)
		}
		return err
	}
	return f.emit(os.Stdout, res, func(w io.Writer) { text(w, res) })
}

// printJSON writes v as indented JSON: the --output json of every command.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// emit writes v as JSON or YAML when asked, else calls text.
func (f *vmFlags) emit(w io.Writer, v any, text func(io.Writer)) error {
	switch f.output {
	case "json":
		return printJSON(w, v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	if text != nil {
		text(w)
	}
	return nil
}

// warn prints advice on stderr unless quiet.
func (f *vmFlags) warn(ws ...string) {
	if f.quiet {
		return
	}
	for _, w := range ws {
		fmt.Fprintln(os.Stderr, "ferry: note:", w)
	}
}

func newVMCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vm",
		Short: "Boot, snapshot, back up and migrate VMs from imported disks (KubeVirt, Cozystack)",
		Long: `A thin layer over KubeVirt's and CDI's own APIs: every command writes
KubeVirt/CDI objects and reads their status; nothing is kept outside the
cluster (and the backup bucket).`,
	}
	cmd.AddCommand(newVMCreateCmd(), newVMListCmd(), newVMGetCmd(),
		newVMPowerCmd(lifecycle.ActionStart), newVMPowerCmd(lifecycle.ActionStop), newVMPowerCmd(lifecycle.ActionRestart),
		newVMDeleteCmd(), newVMSnapshotCmd(), newVMSnapshotsCmd(), newVMRestoreCmd(),
		newVMBackupCmd(), newVMRestoreBackupCmd(), newVMMigrateCmd())
	return cmd
}

// printYAMLObjects prints objects as a multi-document YAML stream.
func printYAMLObjects(w io.Writer, objs []client.Object) error {
	for i, o := range objs {
		b, err := yaml.Marshal(o)
		if err != nil {
			return err
		}
		if i > 0 {
			io.WriteString(w, "---\n")
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

func table(w io.Writer, header string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
