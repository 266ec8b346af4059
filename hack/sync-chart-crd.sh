#!/usr/bin/env bash
# The CRD has one source, deploy/crds/; the Helm chart's crds/ holds a byte-identical copy (Helm cannot
# read files outside the chart). Run this after changing deploy/crds/; tests/helm checks the copy.
# Usage: hack/sync-chart-crd.sh [--check]   (--check: only report differences, exit 1 if any)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/deploy/crds"
DST="$ROOT/deploy/helm/libvirt-operator/crds"
check=false
[ "${1:-}" = "--check" ] && check=true

shopt -s nullglob
status=0
mkdir -p "$DST"
for src in "$SRC"/*.yaml; do
    dst="$DST/$(basename "$src")"
    if cmp -s "$src" "$dst"; then continue; fi
    if $check; then echo "out of date: $dst (run hack/sync-chart-crd.sh)" >&2; status=1; continue; fi
    cp "$src" "$dst.tmp" && mv "$dst.tmp" "$dst"
    echo "updated $dst"
done
# A CRD removed from deploy/crds/ must not linger in the chart.
for dst in "$DST"/*.yaml; do
    [ -e "$SRC/$(basename "$dst")" ] && continue
    if $check; then echo "stale: $dst (not in deploy/crds/)" >&2; status=1; continue; fi
    rm -f "$dst"
    echo "removed $dst"
done
exit "$status"
