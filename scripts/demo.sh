#!/usr/bin/env bash
# demo.sh: a real import end to end, no cluster, no network. Generates a
# 1 GiB-virtual disk with some data, makes a zstd-compressed qcow2 of it
# with qemu-img, inspects it, imports it with ferry into the local image
# store (the default target when no cluster is named), and checks the RAW
# is byte-identical to qemu-img's.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ferry="$root/bin/ferry"
work="${DEMO_DIR:-$root/.cache/demo}"
rm -rf "$work" && mkdir -p "$work"
cd "$work"

echo "== generating a disk image (1 GiB virtual, ~100 MiB of data)"
truncate -s 1G disk.raw
for i in 0 3 7 12 20 40 63; do
	# Mixed content: random and compressible blocks, holes between.
	head -c 8M /dev/urandom | dd of=disk.raw bs=1M seek=$((i * 16)) conv=notrunc status=none
	{ yes "ferry demo block $i" || true; } | head -c 8M | dd of=disk.raw bs=1M seek=$((i * 16 + 8)) conv=notrunc status=none
done
qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd disk.raw disk.qcow2
rm disk.raw

echo "== ferry inspect disk.qcow2"
"$ferry" inspect disk.qcow2

echo "== ferry import disk.qcow2 --store $work/store --output json"
"$ferry" import disk.qcow2 --store "$work/store" --name disk --output json | tee report.json
echo "== store record"
cat "$work/store/disk.json"; echo

echo "== checking against qemu-img convert -O raw"
qemu-img convert -O raw disk.qcow2 reference.raw
want=$(sha256sum reference.raw | cut -d' ' -f1)
got=$(sha256sum store/disk.raw | cut -d' ' -f1)
grep -q "\"raw_sha256\": \"$want\"" report.json || { echo "demo: report digest differs from qemu-img's" >&2; exit 1; }
[ "$want" = "$got" ] || { echo "demo: RAW differs from qemu-img's ($got != $want)" >&2; exit 1; }
echo "OK: ferry's RAW is byte-identical to qemu-img's (sha256 $got)"
echo "   files in $work"
