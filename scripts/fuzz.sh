#!/usr/bin/env bash
# fuzz.sh [TIME] runs every Fuzz target of the module for TIME each.
set -euo pipefail
t="${1:-30s}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
status=0
for pkg in $(go list ./...); do
	for f in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
		echo "== $pkg $f ($t)"
		go test -run='^$' -fuzz="^$f\$" -fuzztime="$t" "$pkg" || status=1
	done
done
exit $status
