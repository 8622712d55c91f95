#!/usr/bin/env bash
# Benchmarks (slow; not part of scripts/test.sh). Generates a bert-base-shaped model with random
# weights, runs the engine benchmark and writes JSON, a markdown table and a plot into docs/bench/.
#   scripts/bench.sh                # everything
#   REPEATS=3 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-env.sh
source scripts/bench-env.sh
"$build/bench/engine_bench" --model "$model" --lengths 128,384 --budgets 1,0.5,0.25,0.125 \
  --threads 1,2 --batch 8 --repeats "$repeats" --sst2 "$shared/data/sst2/dev.tsv" --json docs/bench/engine.json >/dev/null
"$py" tools/bench_report.py --json docs/bench/engine.json --md docs/bench/engine.md \
  --plot docs/bench/engine.png --command "scripts/bench.sh (REPEATS=$repeats)"
echo "wrote docs/bench/engine.{json,md,png}"
