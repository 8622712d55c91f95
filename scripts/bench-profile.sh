#!/usr/bin/env bash
# Where the engine's time goes, per op and per precision: engine_bench --profile on the bert-base
# shape (random weights), 8 x 128 and the SST-2 dev mix, budgets 1 and 0.25, 2 threads. Writes
# docs/bench/profile-<precision>.json and docs/bench/profile.md (or $OUT-<precision>.json and $OUT.md). Slow; not part of scripts/test.sh.
#   scripts/bench-profile.sh
#   PRECISIONS=int8 REPEATS=3 scripts/bench-profile.sh
#   OUT=docs/bench/profile-xeon-no-amx scripts/bench-profile.sh   # another machine's files beside these
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
precisions=${PRECISIONS:-fp32,bf16,int8}
out=${OUT:-docs/bench/profile}
# shellcheck source=scripts/bench-env.sh
source scripts/bench-env.sh
jsons=()
for p in ${precisions//,/ }; do
  "$build/bench/engine_bench" --model "$model" --lengths 128 --batch 8 --budgets 1,0.25 \
    --threads "$threads" --repeats "$repeats" --sst2 "$shared/data/sst2/dev.tsv" --precision "$p" \
    --profile --json "$out-$p.json" >/dev/null
  jsons+=("$out-$p.json")
done
"$py" tools/bench_report.py --profile "${jsons[@]}" --md "$out.md" \
  --command "scripts/bench-profile.sh (REPEATS=$repeats THREADS=$threads)"
echo "wrote $out.md and ${jsons[*]}"
