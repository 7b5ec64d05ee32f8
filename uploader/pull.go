package uploader

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	cdiv1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
)

// PullSource is an image CDI fetches by itself (--pull): a DataVolume
// with source.http or source.s3 instead of an upload.
type PullSource struct {
	// URL is http(s)://... for source.http; for source.s3, s3 URLs are
	// given to CDI as http(s)://ENDPOINT/BUCKET/KEY (set S3).
	URL string
	S3  bool
	// SHA256 of the file CDI downloads, checked by CDI (source.http
	// checksum, CDI >= 1.65). Not supported for S3 by CDI.
	SHA256 string
	// SecretRef names a Secret with accessKeyId/secretKey (basic auth or
	// S3 keys); CertConfigMap a ConfigMap with the server's CA.
	SecretRef, CertConfigMap string
	// ExtraHeaders are "Name: value" headers for source.http.
	ExtraHeaders []string
	// VirtualSize of the image (sizes the volume).
	VirtualSize int64
}

func (p *PullSource) validate() error {
	u, err := url.Parse(p.URL)
	if err != nil {
		return fmt.Errorf("pull URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("pull URL %q: CDI fetches http(s) URLs only", redactURL(p.URL))
	}
	if u.User != nil {
		return errors.New("pull URL: credentials belong in a Secret (--pull-secret), not the URL")
	}
	if p.VirtualSize <= 0 {
		return errors.New("pull: the image's virtual size is needed to size the volume")
	}
	if p.SHA256 != "" && (len(p.SHA256) != 64 || strings.Trim(strings.ToLower(p.SHA256), "0123456789abcdef") != "") {
		return fmt.Errorf("pull: sha256 %q is not 64 hex digits", p.SHA256)
	}
	if p.S3 && p.SHA256 != "" {
		return errors.New("pull: CDI checks checksums for source.http only")
	}
	for _, h := range p.ExtraHeaders {
		if !strings.Contains(h, ":") {
			return fmt.Errorf("pull header %q: want Name: value", h)
		}
	}
	return nil
}

// Pull creates a DataVolume (or VMDisk with source.http) that makes CDI
// import src, and waits for it. CDI retries a failing import by
// restarting its pod; more than Retries restarts with an error is a
// failure.
func (t *DataVolumeTarget) Pull(ctx context.Context, src PullSource) (*DataVolumeResult, error) {
	if err := src.validate(); err != nil {
		return nil, t.fail(err)
	}
	size, err := t.requestedSize(src.VirtualSize)
	if err != nil {
		return nil, t.fail(err)
	}
	res := &DataVolumeResult{Target: t.ref, Namespace: t.ns, DataVolume: t.dv, Size: size, Pull: true, DataSource: t.o.DataSource, SourceSHA256: src.SHA256}
	if t.o.VMDisk {
		res.VMDisk = t.o.Name
		if src.S3 || src.SHA256 != "" || src.SecretRef != "" || src.CertConfigMap != "" || len(src.ExtraHeaders) > 0 {
			return nil, t.fail(errors.New("pull into a VMDisk: its source.http takes a plain URL only"))
		}
	}
	res.PVCSize = t.pvcSize(ctx, size)
	reused, err := t.prepare(ctx, src.SHA256, res)
	if err != nil || reused {
		if err == nil && t.o.DataSource != "" {
			err = t.ensureDataSource(ctx)
		}
		if err != nil {
			return nil, t.fail(err)
		}
		return res, nil
	}
	dvs := &cdiv1.DataVolumeSource{}
	if src.S3 {
		dvs.S3 = &cdiv1.DataVolumeSourceS3{URL: src.URL, SecretRef: src.SecretRef, CertConfigMap: src.CertConfigMap}
	} else {
		dvs.HTTP = &cdiv1.DataVolumeSourceHTTP{URL: src.URL, SecretRef: src.SecretRef, CertConfigMap: src.CertConfigMap, ExtraHeaders: src.ExtraHeaders}
		if src.SHA256 != "" {
			dvs.HTTP.Checksum = "sha256:" + strings.ToLower(src.SHA256)
		}
	}
	img := Image{VirtualSize: src.VirtualSize, SourceURL: src.URL}
	if err := t.create(ctx, size, img, dvs); err != nil {
		return nil, t.fail(err)
	}
	ok := false
	defer func() {
		if !ok && !t.o.KeepOnFailure {
			t.cleanup()
		}
	}()
	start := time.Now()
	_, err = t.waitFor(ctx, t.o.DoneTimeout, res, "Succeeded", func(dv *cdiv1.DataVolume) (bool, error) {
		if err := quotaError(dv); err != nil {
			return false, err
		}
		switch dv.Status.Phase {
		case cdiv1.Succeeded:
			return true, nil
		case cdiv1.Failed:
			return false, fmt.Errorf("%w: %s", ErrFailed, conditionMessage(dv))
		case cdiv1.WaitForFirstConsumer, cdiv1.PendingPopulation:
			return false, uploadBlocked(dv)
		}
		if int(dv.Status.RestartCount) > t.o.Retries {
			return false, fmt.Errorf("%w: CDI's importer restarted %d times: %s", ErrFailed, dv.Status.RestartCount, conditionMessage(dv))
		}
		return false, nil
	})
	res.WaitDone = time.Since(start)
	if err != nil {
		return nil, t.fail(err)
	}
	if err := t.record(ctx, Image{SourceSHA256: src.SHA256}, res); err != nil {
		return nil, t.fail(err)
	}
	if t.o.DataSource != "" {
		if err := t.ensureDataSource(ctx); err != nil {
			return nil, t.fail(err)
		}
	}
	ok = true
	return res, nil
}
