# Sourced by the benchmark scripts (bench.sh, bench-peers.sh, bench-profile.sh): one set-up, so
# they measure the same binary, model and thread model. Sets $py, $build, $repeats, $shared and
# $model, exports the server's OpenMP thread model, builds engine_bench in $build and makes the
# bert-base-shaped model (random weights, seed 5, std 0.02) once.
# shellcheck shell=bash
# shellcheck source=scripts/python-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/python-env.sh"
# The server's OpenMP thread model (server/main.cc): passive threads after a short spin.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive} GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-10000}
build=${BUILD_DIR:-build-bench}
# shellcheck disable=SC2034  # read by the scripts that source this file
repeats=${REPEATS:-5}
# shellcheck disable=SC2034
shared=${TOPSERVE_SHARED_DIR:-../shared}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTOPSERVE_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target engine_bench
model="$build/models/bert-base-cls"
[ -f "$model/model.safetensors" ] ||
  "$py" tools/gen_model.py --out "$model" --preset bert-base --task cls --seed 5 --std 0.02
mkdir -p docs/bench
