#!/usr/bin/env bash
# Overload benchmark (slow, ~2 minutes; not part of scripts/test.sh): builds the Release server into
# $BUILD_DIR (default ./build) and runs tools/overload.py against it on loopback with the shipped
# model models/sst2-small. Extra arguments go to tools/overload.py, e.g.
#   scripts/overload.sh --json /tmp/overload.json
#   scripts/overload.sh --runs tight --seconds 10 --budget 1.0
#   JOBS=2 scripts/overload.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/python-env.sh
source scripts/python-env.sh
build=${BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target topserve-server
exec "$py" tools/overload.py --binary "$build/server/topserve-server" --model models/sst2-small "$@"
