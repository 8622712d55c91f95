#!/usr/bin/env bash
# Runs every loadtest/ghz/*.json config (or the ones named) against a topserve server on this machine
# and writes one ghz JSON report per config to loadtest/reports/. Uses ghz when it is installed,
# otherwise loadtest/load.py (same configs, same report layout).
#
#   loadtest/run.sh                          # all configs, against the host in each config (127.0.0.1:8500)
#   loadtest/run.sh classify-closed          # one config
#   HOST=127.0.0.1:50051 loadtest/run.sh     # another loopback port
#   TOOL=load.py loadtest/run.sh             # force the Python load generator
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/python-env.sh
source scripts/python-env.sh

tool="${TOOL:-}"
if [ -z "$tool" ]; then
  if command -v ghz >/dev/null 2>&1; then tool=ghz; else tool=load.py; fi
fi
case "$tool" in
  ghz|load.py) ;;
  *) echo "run.sh: TOOL must be ghz or load.py, not '$tool'" >&2; exit 2 ;;
esac

configs=()
if [ "$#" -eq 0 ]; then
  configs=(loadtest/ghz/*.json)
else
  for name in "$@"; do configs+=("loadtest/ghz/${name%.json}.json"); done
fi

mkdir -p loadtest/reports
status=0
for cfg in "${configs[@]}"; do
  if [ ! -f "$cfg" ]; then
    echo "run.sh: no such config: $cfg" >&2
    status=2
    continue
  fi
  name="$(basename "$cfg" .json)"
  out="loadtest/reports/${name}.${tool%.py}.json"
  echo "== $name ($tool) -> $out"
  args=(--config "$cfg" -O json -o "$out")
  if [ "$tool" = ghz ]; then
    # ghz takes the host as its argument; the config's host is used when HOST is unset.
    ghz "${args[@]}" ${HOST:+"$HOST"} || status=1
  else
    "$py" loadtest/load.py "${args[@]}" ${HOST:+"$HOST"} || status=1
  fi
done
exit "$status"
