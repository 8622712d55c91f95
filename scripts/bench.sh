#!/usr/bin/env bash
# Benchmarks (slow; not part of scripts/test.sh). Generates a bert-base-shaped model with random
# weights, runs the engine benchmark and writes JSON, a markdown table and a plot into docs/bench/.
#   scripts/bench.sh                # everything
#   REPEATS=3 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/python-env.sh
source scripts/python-env.sh
# The server's OpenMP thread model (server/main.cc): passive threads after a short spin.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive} GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-10000}
build=${BUILD_DIR:-build-bench}
repeats=${REPEATS:-5}
shared=${TOPSERVE_SHARED_DIR:-../shared}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTOPSERVE_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target engine_bench
model="$build/models/bert-base-cls"
[ -f "$model/model.safetensors" ] || "$py" tools/gen_model.py --out "$model" --preset bert-base --task cls --seed 5 --std 0.02
mkdir -p docs/bench
"$build/bench/engine_bench" --model "$model" --lengths 128,384 --budgets 1,0.5,0.25,0.125 \
  --threads 1,2 --batch 8 --repeats "$repeats" --sst2 "$shared/data/sst2/dev.tsv" --json docs/bench/engine.json >/dev/null
"$py" tools/bench_report.py --json docs/bench/engine.json --md docs/bench/engine.md \
  --plot docs/bench/engine.png --command "scripts/bench.sh (REPEATS=$repeats)"
echo "wrote docs/bench/engine.{json,md,png}"
