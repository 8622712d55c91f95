#!/usr/bin/env bash
# Builds topserve and runs the default test suite (what CI runs). Slow suites have their own
# scripts: scripts/test-sanitizers.sh, scripts/bench.sh.
#   scripts/test.sh            # build into ./build and run ctest
#   BUILD_DIR=out scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
# Debian's oneDNN and torch use OpenMP; spinning workers starve everything else on small machines.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs" --timeout 900 "$@"
