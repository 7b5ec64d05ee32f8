#!/usr/bin/env bash
# install-deps.sh installs what ferry's tests and demo need: the reference
# tools from Debian (qemu-img, xz, zstd, bzip2, gzip...) and, with --tools,
# the Go-built test peers (scripts/install-tools.sh). Installs with apt when
# run as root; otherwise prints what to install. Under CI=true a missing
# tool is an error, never a skip.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
want_tools=0
[ "${1:-}" = "--tools" ] && want_tools=1

# command -> Debian package
declare -A pkgs=(
	[qemu-img]=qemu-utils
	[qemu-io]=qemu-utils
	[xz]=xz-utils
	[zstd]=zstd
	[bzip2]=bzip2
	[gzip]=gzip
	[tar]=tar
	[curl]=curl
	[nbdkit]=nbdkit
	[genisoimage]=genisoimage
	[etcd]=etcd-server
)

missing=()
for c in "${!pkgs[@]}"; do
	command -v "$c" >/dev/null 2>&1 || missing+=("${pkgs[$c]}")
done
# Real images the tests convert (design notes section 5).
declare -A files=(
	[/usr/lib/ipxe/ipxe.iso]=ipxe
	[/usr/lib/grub-rescue/grub-rescue-cdrom.iso]=grub-rescue-pc
	[/usr/include/libdeflate.h]=libdeflate-dev
)
for f in "${!files[@]}"; do
	[ -e "$f" ] || missing+=("${files[$f]}")
done
if [ ${#missing[@]} -gt 0 ]; then
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "install-deps: apt-get install ${missing[*]}" >&2
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >/dev/null
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	else
		echo "install-deps: missing Debian packages: ${missing[*]}" >&2
		echo "install-deps: run as root: apt-get install ${missing[*]}" >&2
		[ "${CI:-}" = true ] && exit 1
	fi
fi

if [ "$want_tools" = 1 ]; then
	"$root/scripts/install-tools.sh"
fi
