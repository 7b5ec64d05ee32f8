package main

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/spf13/pflag"

	"github.com/hikube/ferry/importer"
	"github.com/hikube/ferry/pkg/progress"
)

// sourceFlags are the flags of every command that reads a source
// (convert, inspect, import).
type sourceFlags struct {
	connections  int
	retries      int
	headers      []string
	checksum     string
	checksumURL  string
	caFile       string
	insecure     bool
	user         string
	passwordFile string
	tokenFile    string
	s3Endpoint   string
	s3Region     string
	s3PathStyle  bool
	scratch      string
	disk         string
	format       string
	allowDir     string
}

func (f *sourceFlags) register(fl *pflag.FlagSet) {
	fl.IntVar(&f.connections, "connections", importer.DefaultConnections, "parallel ranged requests to an http(s) or s3 source")
	fl.IntVar(&f.retries, "retries", importer.DefaultRetries, "retries of a failed request (transient errors only)")
	fl.StringArrayVar(&f.headers, "header", nil, "extra HTTP header K:V for the source (repeatable)")
	fl.StringVar(&f.checksum, "checksum", "", "expected digest of the source file, ALG:HEX (md5, sha1, sha256, sha512)")
	fl.StringVar(&f.checksumURL, "checksum-url", "", "SHA256SUMS/SHA512SUMS file listing the source's digest")
	fl.StringVar(&f.caFile, "ca-file", "", "PEM CA bundle to trust for https and s3 sources")
	fl.BoolVar(&f.insecure, "insecure", false, "skip TLS verification of the source")
	fl.StringVar(&f.user, "user", "", "HTTP basic auth user for the source (password from --password-file or FERRY_HTTP_PASSWORD)")
	fl.StringVar(&f.passwordFile, "password-file", "", "file holding the HTTP basic auth password")
	fl.StringVar(&f.tokenFile, "token-file", "", "file holding an HTTP bearer token for the source (or FERRY_HTTP_TOKEN)")
	fl.StringVar(&f.s3Endpoint, "s3-endpoint", "", "S3 endpoint host[:port] or URL (default AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS)")
	fl.StringVar(&f.s3Region, "s3-region", "", "S3 region (default AWS_REGION)")
	fl.BoolVar(&f.s3PathStyle, "s3-path-style", false, "path-style S3 bucket addressing (MinIO, Ceph RGW)")
	fl.StringVar(&f.scratch, "scratch", "", "directory to spool a compressed or streamed image that needs random access (qcow2.xz, stdin qcow2)")
	fl.StringVar(&f.disk, "disk", "", "disk to convert from an OVA holding several")
	fl.StringVarP(&f.format, "format", "f", "", "source image format, skipping detection (qcow2, vmdk, vpc|vhd, vhdx, vdi, iso, raw)")
	fl.StringVar(&f.allowDir, "allow-dir", "", "directory inside which backing files, extents and parents may be followed (default: a local source's directory)")
}

// options builds the importer options; secrets stay in files and env.
func (f *sourceFlags) options(fetched *progress.Counter) (importer.Options, error) {
	o := importer.Options{
		Connections: f.connections,
		Retries:     f.retries,
		Checksum:    f.checksum,
		ChecksumURL: f.checksumURL,
		CAFile:      f.caFile,
		Insecure:    f.insecure,
		Auth:        importer.AuthFromEnv(),
		S3:          importer.S3Options{Endpoint: f.s3Endpoint, Region: f.s3Region, PathStyle: f.s3PathStyle},
		Scratch:     f.scratch,
		Disk:        f.disk,
		Progress:    fetched,
	}
	if f.retries == 0 {
		o.Retries = -1 // --retries 0 means none
	}
	if f.user != "" {
		o.Auth.Username = f.user
	}
	if f.passwordFile != "" {
		o.Auth.PasswordFile = f.passwordFile
	}
	if f.tokenFile != "" {
		o.Auth.TokenFile = f.tokenFile
	}
	if len(f.headers) > 0 {
		o.Headers = http.Header{}
		for _, h := range f.headers {
			k, v, ok := strings.Cut(h, ":")
			if !ok || strings.TrimSpace(k) == "" {
				return o, usageError{fmt.Errorf("--header %q: want K:V", h)}
			}
			o.Headers.Add(strings.TrimSpace(k), strings.TrimSpace(v))
		}
	}
	// Validate a copy: Validate fills defaults and is not idempotent on
	// "no retries"; the pipeline validates the real thing.
	if c := o; c.Validate() != nil {
		return o, usageError{c.Validate()}
	}
	return o, nil
}
