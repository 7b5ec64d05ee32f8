package main

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/hikube/ferry/importer"
	"github.com/hikube/ferry/pkg/kube"
	"github.com/hikube/ferry/pkg/lifecycle"
	"github.com/hikube/ferry/pkg/pipeline"
	"github.com/hikube/ferry/uploader"
)

// backupImporter lands a backup's RAW image in a new DataVolume with the
// `ferry import SRC dv://NS/NAME` pipeline, the manifest's SHA-256 checked
// as the bytes stream, the claim's storage as recorded.
func backupImporter(f *vmFlags, s3 lifecycle.S3Options) lifecycle.DiskImporter {
	return func(ctx context.Context, src, checksum string, dst lifecycle.DiskTarget) error {
		var size int64
		if dst.Size != "" {
			q, err := resource.ParseQuantity(dst.Size)
			if err != nil {
				return fmt.Errorf("recorded size %q: %w", dst.Size, err)
			}
			size = q.Value()
		}
		dvo := uploader.DataVolumeOptions{StorageClass: dst.StorageClass, Size: size, Retries: 3}
		if dst.VolumeMode != "" {
			dvo.VolumeMode = corev1.PersistentVolumeMode(dst.VolumeMode)
		}
		if modes := dst.PVCAccessModes(); len(modes) > 0 {
			dvo.AccessMode = modes[0]
		}
		job := pipeline.ImportJob{
			Source: src,
			Target: pipeline.Target{Kind: pipeline.TargetDV, Namespace: dst.Namespace, Name: dst.Name},
			Fetch: importer.Options{
				Checksum: checksum,
				S3: importer.S3Options{Endpoint: s3.Endpoint, Region: s3.Region, PathStyle: s3.PathStyle,
					AccessKey: s3.AccessKey, SecretKey: s3.SecretKey, SessionToken: s3.SessionToken},
			},
			Kube:       kube.Options{Kubeconfig: f.kubeconfig, Context: f.context, Namespace: dst.Namespace, UserAgent: "ferry/" + version},
			DataVolume: dvo,
		}
		if err := job.Validate(); err != nil {
			return err
		}
		_, err := pipeline.Import(ctx, job)
		return err
	}
}
