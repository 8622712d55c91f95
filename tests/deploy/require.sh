#!/usr/bin/env bash
# Runs a deployment check, failing with a clear message when its tool is missing.
#   tests/deploy/require.sh TOOL COMMAND [ARGS...]
# TOOL is an executable name (looked up on PATH) or a path (e.g. the .venv Python).
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: $0 TOOL COMMAND [ARGS...]" >&2
  exit 2
fi
tool="$1"
shift
if [[ "$tool" == */* ]]; then
  if [ ! -x "$tool" ]; then
    echo "FAIL: $tool is missing: run scripts/install-deps.sh" >&2
    exit 1
  fi
elif ! command -v "$tool" >/dev/null 2>&1; then
  echo "FAIL: '$tool' is not installed: run scripts/install-deps.sh" >&2
  exit 1
fi
exec "$@"
