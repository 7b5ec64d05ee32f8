#!/usr/bin/env bash
# fuzz.sh [TIME] runs every Fuzz target of the module for TIME each.
set -euo pipefail
t="${1:-30s}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
status=0
for pkg in $(go list ./...); do
	for f in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
		echo "== $pkg $f ($t)"
		# Minimizing each new input may take 60 s by default: with seeds
		# of tens of KiB (qemu-img's qcow2) the qcow2 target spent 90 % of
		# its time minimizing, at a few execs a second.
		go test -tags "${TAGS:-}" -run='^$' -fuzz="^$f\$" -fuzztime="$t" -fuzzminimizetime=5s "$pkg" || status=1
	done
done
exit $status
