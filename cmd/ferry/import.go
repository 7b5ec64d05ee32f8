package main

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/hikube/ferry/importer"
	"github.com/hikube/ferry/pkg/kube"
	"github.com/hikube/ferry/pkg/pipeline"
	"github.com/hikube/ferry/uploader"
)

type importFlags struct {
	// output
	output string
	quiet  bool
	// source
	format, allowDir, checksum, checksumURL, scratch, disk string
	sourceCA                                               string
	sourceInsecure                                         bool
	connections, fetchRetries                              int
	user, passwordFile, tokenFile                          string
	headers                                                []string
	workers                                                int
	noSync                                                 bool
	// store
	store, name string
	// kubernetes
	kubeconfig, context, namespace string
	storageClass, volumeMode       string
	accessMode, size, compress     string
	uploadProxyURL, caFile         string
	cdiNamespace                   string
	insecure, replace, reuse       bool
	optical, noBindImmediate, keep bool
	retries                        int
	readyTimeout, timeout          time.Duration
	datasource                     string
	pull                           bool
	pullSecret, pullCertConfigMap  string
	// s3
	s3Endpoint, s3Region string
	s3PathStyle          bool
	partSize             string
	s3Threads            int
}

func newImportCmd() *cobra.Command {
	var f importFlags
	cmd := &cobra.Command{
		Use:   "import SRC [TARGET]",
		Short: "Fetch, convert to RAW, verify and upload an image (file, store, S3, DataVolume, VMDisk)",
		Long: `Import a disk image: fetch SRC (a path, file://, http(s)://, s3://), convert it
to RAW on the fly, verify it, and deliver it to TARGET:

  PATH or file://PATH        a local RAW file (sparse)
  (none)                     the local image store (--store DIR, --name NAME)
  s3://BUCKET/KEY            an S3 object (multipart, parallel parts); the RAW
                             SHA-256 is recorded as x-amz-meta-sha256
  dv://[NAMESPACE/]NAME      a CDI DataVolume, through CDI's upload proxy
  vmdisk://[NAMESPACE/]NAME  a Cozystack/Hikube VMDisk (its DataVolume is
                             vm-disk-NAME); --optical for ISOs

Kubernetes access works like kubectl (--kubeconfig, --context, -n; in-cluster
config in a pod). A broken upload restarts (CDI cannot resume), up to --retries.
With --pull, CDI fetches SRC itself (source.http with a checksum, or source.s3).`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return usageError{fmt.Errorf("import: expects SRC [TARGET], got %d argument(s) (see --help)", len(args))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			target := ""
			if len(args) == 2 {
				target = args[1]
			}
			return runImport(cmd, args[0], target, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.output, "output", "o", "", "report format: json (on stdout)")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "no progress output")

	fl.StringVarP(&f.format, "format", "f", "", "source format, skipping detection")
	fl.StringVar(&f.allowDir, "allow-dir", "", "directory inside which backing files may be followed")
	fl.StringVar(&f.checksum, "checksum", "", "expected digest of SRC as published, ALG:HEX (sha256:...)")
	fl.StringVar(&f.checksumURL, "checksum-url", "", "SHA256SUMS-style file holding SRC's digest")
	fl.StringVar(&f.scratch, "scratch", "", "directory to spool sources that are not random-access (compressed, no Range support)")
	fl.StringVar(&f.disk, "disk", "", "disk of an OVA holding several")
	fl.StringVar(&f.sourceCA, "source-ca-file", "", "PEM CA bundle for an HTTPS/S3 source")
	fl.BoolVar(&f.sourceInsecure, "source-insecure", false, "skip TLS verification of the source")
	fl.StringArrayVar(&f.headers, "header", nil, "extra HTTP header for the source, 'Name: value' (repeatable)")
	fl.IntVar(&f.connections, "connections", importer.DefaultConnections, "parallel ranged requests to an http(s) or s3 source")
	fl.IntVar(&f.fetchRetries, "source-retries", importer.DefaultRetries, "retries of a failed source request (transient errors only)")
	fl.StringVar(&f.user, "user", "", "HTTP basic auth user for the source (password from --password-file or FERRY_HTTP_PASSWORD)")
	fl.StringVar(&f.passwordFile, "password-file", "", "file holding the source's HTTP basic auth password")
	fl.StringVar(&f.tokenFile, "token-file", "", "file holding an HTTP bearer token for the source (or FERRY_HTTP_TOKEN)")
	fl.IntVarP(&f.workers, "workers", "w", 0, "parallel conversion workers (default: number of CPUs)")
	fl.BoolVar(&f.noSync, "no-sync", false, "do not fsync a file target at the end")

	fl.StringVar(&f.store, "store", "", "image store directory (default $XDG_DATA_HOME/ferry/images)")
	fl.StringVar(&f.name, "name", "", "image name in the store (default: SRC's base name)")

	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG, ~/.kube/config, in-cluster)")
	fl.StringVar(&f.context, "context", "", "kubeconfig context")
	fl.StringVarP(&f.namespace, "namespace", "n", "", "namespace (default: the context's)")
	fl.StringVar(&f.storageClass, "storage-class", "replicated", "storage class of the volume")
	fl.StringVar(&f.volumeMode, "volume-mode", "Block", "volume mode: Block or Filesystem")
	fl.StringVar(&f.accessMode, "access-mode", "ReadWriteMany", "access mode (ReadWriteMany allows live migration)")
	fl.StringVar(&f.size, "size", "", "volume size (e.g. 20Gi; default: the virtual size rounded up to 1 MiB)")
	fl.StringVar(&f.compress, "compress", "none", "compress the upload stream: zstd, gzip or none")
	fl.StringVar(&f.uploadProxyURL, "uploadproxy-url", "", "CDI upload proxy URL (default: from CDIConfig)")
	fl.StringVar(&f.caFile, "ca-file", "", "PEM CA of the upload proxy (default: CDI's cdi-uploadproxy-signer-bundle)")
	fl.StringVar(&f.cdiNamespace, "cdi-namespace", "", "namespace of the CDI install (default: cdi, cozy-kubevirt-cdi, kubevirt-cdi)")
	fl.BoolVar(&f.insecure, "insecure", false, "skip TLS verification of the upload proxy")
	fl.BoolVar(&f.replace, "replace", false, "delete an existing DataVolume/VMDisk of the same name first")
	fl.BoolVar(&f.reuse, "reuse-if-same", false, "keep an existing DataVolume/VMDisk holding the same source digest")
	fl.BoolVar(&f.optical, "optical", false, "VMDisk is a CD-ROM (ISO)")
	fl.BoolVar(&f.noBindImmediate, "no-bind-immediate", false, "do not ask for immediate binding (WaitForFirstConsumer storage then blocks the upload)")
	fl.BoolVar(&f.keep, "keep-on-failure", false, "keep a DataVolume whose import failed (default: deleted)")
	fl.IntVar(&f.retries, "retries", 3, "restarts of a broken upload")
	fl.DurationVar(&f.readyTimeout, "ready-timeout", 5*time.Minute, "wait for the upload to become possible")
	fl.DurationVar(&f.timeout, "timeout", 30*time.Minute, "wait for CDI to finish after the transfer (or a --pull import)")
	fl.StringVar(&f.datasource, "datasource", "", "create/update this CDI DataSource to point at the result")
	fl.BoolVar(&f.pull, "pull", false, "let CDI fetch SRC itself (source.http/source.s3) instead of uploading")
	fl.StringVar(&f.pullSecret, "pull-secret", "", "Secret (accessKeyId, secretKey) CDI uses to fetch SRC")
	fl.StringVar(&f.pullCertConfigMap, "pull-cert-configmap", "", "ConfigMap with the CA CDI uses to fetch SRC")

	fl.StringVar(&f.s3Endpoint, "s3-endpoint", "", "S3 endpoint for s3:// source and target (default $AWS_ENDPOINT_URL)")
	fl.StringVar(&f.s3Region, "s3-region", "", "S3 region (default $AWS_REGION)")
	fl.BoolVar(&f.s3PathStyle, "s3-path-style", false, "path-style S3 addressing")
	fl.StringVar(&f.partSize, "part-size", "16Mi", "S3 multipart part size")
	fl.IntVar(&f.s3Threads, "s3-threads", 4, "S3 parts uploaded in parallel (memory: part size x threads)")
	return cmd
}

func runImport(cmd *cobra.Command, src, target string, f importFlags) error {
	usage := func(err error) error { return usageError{fmt.Errorf("import: %w", err)} }
	if f.output != "" && f.output != "json" {
		return usage(fmt.Errorf("--output %q: only json is supported", f.output))
	}
	t, err := pipeline.ParseTarget(target)
	if err != nil {
		return usage(err)
	}
	if t.Kind == pipeline.TargetStore {
		t.Name = f.name
	}
	if f.namespace != "" && t.Namespace != "" && f.namespace != t.Namespace {
		return usage(fmt.Errorf("namespace %q in %s and -n %q disagree", t.Namespace, target, f.namespace))
	}
	comp, err := uploader.ParseCompression(f.compress)
	if err != nil {
		return usage(err)
	}
	var size int64
	if f.size != "" {
		q, err := resource.ParseQuantity(f.size)
		if err != nil {
			return usage(fmt.Errorf("--size %q: %w", f.size, err))
		}
		size = q.Value()
	}
	part, err := resource.ParseQuantity(f.partSize)
	if err != nil {
		return usage(fmt.Errorf("--part-size %q: %w", f.partSize, err))
	}
	hdr := http.Header{}
	for _, h := range f.headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok {
			return usage(fmt.Errorf("--header %q: want 'Name: value'", h))
		}
		hdr.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	retries := f.retries
	if retries == 0 {
		retries = -1 // the option's "none"
	}
	var cdiNS []string
	if f.cdiNamespace != "" {
		cdiNS = []string{f.cdiNamespace}
	}
	m := &meter{stage: "import"}
	job := pipeline.ImportJob{
		Source:   src,
		Target:   t,
		StoreDir: f.store,
		Format:   f.format,
		AllowDir: f.allowDir,
		Workers:  f.workers,
		NoSync:   f.noSync,
		Fetch: importer.Options{
			Checksum: f.checksum, ChecksumURL: f.checksumURL, Scratch: f.scratch, Disk: f.disk,
			CAFile: f.sourceCA, Insecure: f.sourceInsecure, Headers: hdr, Auth: importer.AuthFromEnv(),
			S3:          importer.S3Options{Endpoint: f.s3Endpoint, Region: f.s3Region, PathStyle: f.s3PathStyle},
			Connections: f.connections, Retries: f.fetchRetries,
		},
		Kube: kube.Options{Kubeconfig: f.kubeconfig, Context: f.context, Namespace: f.namespace, UserAgent: "ferry/" + version},
		DataVolume: uploader.DataVolumeOptions{
			Optical: f.optical, StorageClass: f.storageClass,
			VolumeMode: corev1.PersistentVolumeMode(f.volumeMode), AccessMode: corev1.PersistentVolumeAccessMode(f.accessMode),
			Size: size, NoBindImmediate: f.noBindImmediate, Replace: f.replace, ReuseIfSame: f.reuse,
			Compression: comp, Retries: retries, UploadProxyURL: f.uploadProxyURL, CAFile: f.caFile, Insecure: f.insecure,
			CDINamespaces: cdiNS, ReadyTimeout: f.readyTimeout, DoneTimeout: f.timeout, DataSource: f.datasource,
			KeepOnFailure: f.keep,
		},
		Pull: f.pull, PullSecret: f.pullSecret, PullCertConfigMap: f.pullCertConfigMap,
		S3: uploader.S3Options{
			Endpoint: f.s3Endpoint, Region: f.s3Region, PathStyle: f.s3PathStyle,
			PartSize: part.Value(), Threads: f.s3Threads, Retries: retries,
		},
		Progress: m,
		OnStart:  func(in *pipeline.Input) { m.total.Store(in.VirtualSize()) },
	}
	if f.user != "" {
		job.Fetch.Auth.Username = f.user
	}
	if f.passwordFile != "" {
		job.Fetch.Auth.PasswordFile = f.passwordFile
	}
	if f.tokenFile != "" {
		job.Fetch.Auth.TokenFile = f.tokenFile
	}
	if f.fetchRetries == 0 {
		job.Fetch.Retries = -1 // --source-retries 0: none
	}
	if t.Kind == pipeline.TargetDV || t.Kind == pipeline.TargetVMDisk {
		if t.Namespace == "" {
			job.Target.Namespace = f.namespace
		}
	}
	if err := job.Validate(); err != nil {
		return usage(err)
	}
	r := startProgress(m, f.quiet || f.pull)
	rep, err := pipeline.Import(cmd.Context(), job)
	r.Stop()
	if err != nil {
		return err
	}
	if f.output == "json" {
		return printJSON(os.Stdout, rep)
	}
	if !f.quiet {
		what := "imported"
		if dv := rep.DataVolume; dv != nil && dv.Reused {
			what = "already there (same source digest), nothing sent:"
		}
		fmt.Fprintf(os.Stderr, "%s %s (%s, %s virtual) to %s in %.2fs\n", what, rep.Source, rep.Format, humanBytes(rep.VirtualSize), rep.Target, rep.DurationSeconds)
		if rep.RawSHA256 != "" {
			fmt.Fprintf(os.Stderr, "raw sha256: %s\n", rep.RawSHA256)
		}
	}
	return nil
}
