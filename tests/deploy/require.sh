#!/usr/bin/env bash
# Runs a deployment check, failing with a clear message when its tool is missing.
#   tests/deploy/require.sh TOOL COMMAND [ARGS...]
# TOOL is an executable name or path; "node_modules" checks the repository's npm packages.
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: $0 TOOL COMMAND [ARGS...]" >&2
  exit 2
fi
tool="$1"
shift
root="$(cd "$(dirname "$0")/../.." && pwd)"
if [ "$tool" = node_modules ]; then
  if [ ! -d "$root/node_modules/kubernetes-models" ]; then
    echo "FAIL: $root/node_modules is missing: run scripts/install-deps.sh" \
         "(it runs 'npm ci --no-audit --no-fund' at the repository root)" >&2
    exit 1
  fi
elif ! command -v "$tool" >/dev/null 2>&1; then
  echo "FAIL: '$tool' is not installed: run scripts/install-deps.sh" >&2
  exit 1
fi
exec "$@"
