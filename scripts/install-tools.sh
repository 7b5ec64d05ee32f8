#!/usr/bin/env bash
# install-tools.sh [CACHE_DIR] installs the test peers' server binaries into
# CACHE_DIR/bin (default: <repo root>/.cache/tools). Idempotent: a tool that
# is already there is left alone. Tests find them through $FERRY_TOOLS.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-${FERRY_TOOLS:-$root/.cache/tools}}"
mkdir -p "$dir/bin"
dir="$(cd "$dir" && pwd)"

# MinIO, pinned: the S3 test peer (internal/testpeer/minio). Built from
# source through the Go module proxy (~5 min cold, seconds when cached).
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
if [ ! -x "$dir/bin/minio" ]; then
	echo "install-tools: installing minio@$MINIO_VERSION into $dir/bin" >&2
	# Build outside the repo so its go.mod does not interfere.
	(cd "$dir" && GOFLAGS=-buildvcs=false GOBIN="$dir/bin" go install "github.com/minio/minio@$MINIO_VERSION")
fi

# kube-apiserver, pinned: the Kubernetes test peer (internal/testpeer/kube,
# run by controller-runtime's envtest). Not packaged by Debian: built from
# the tools module hack/tools/kube (own go.mod + committed go.sum; ~4.5 min
# cold on 2 cores). The version stamp in ldflags is what clients see.
KUBE_VERSION="v1.34.2"
if [ ! -x "$dir/bin/kube-apiserver" ] || [ "$(cat "$dir/bin/.kube-apiserver.version" 2>/dev/null)" != "$KUBE_VERSION" ]; then
	echo "install-tools: building kube-apiserver $KUBE_VERSION into $dir/bin (several minutes)" >&2
	minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
	(cd "$root/hack/tools/kube" && GOFLAGS=-buildvcs=false nice go build -trimpath \
		-ldflags "-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean" \
		-o "$dir/bin/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
	mv -f "$dir/bin/kube-apiserver.tmp" "$dir/bin/kube-apiserver"
	echo "$KUBE_VERSION" >"$dir/bin/.kube-apiserver.version"
fi

# etcd comes from Debian (etcd-server, see install-deps.sh); envtest wants it
# beside kube-apiserver (KUBEBUILDER_ASSETS=$dir/bin).
if [ ! -e "$dir/bin/etcd" ]; then
	if etcd_path="$(command -v etcd)"; then
		ln -sf "$etcd_path" "$dir/bin/etcd"
	else
		echo "install-tools: etcd not found: run scripts/install-deps.sh (apt-get install etcd-server)" >&2
		[ "${CI:-}" = true ] && exit 1
	fi
fi

# CRDs for the Kubernetes peer: extracted from the real CDI and KubeVirt
# modules' sources (hack/tools/crdgen). Regenerated when crdgen changes.
crd_stamp="$(cat "$root/hack/tools/crdgen/main.go" | sha256sum | cut -c1-16)"
if [ "$(cat "$dir/crds/.stamp" 2>/dev/null)" != "$crd_stamp" ]; then
	echo "install-tools: extracting CDI and KubeVirt CRDs into $dir/crds" >&2
	(cd "$root" && go run ./hack/tools/crdgen -out "$dir/crds")
	echo "$crd_stamp" >"$dir/crds/.stamp"
fi
echo "install-tools: tools in $dir/bin" >&2
