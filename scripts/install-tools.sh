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
echo "install-tools: tools in $dir/bin" >&2
