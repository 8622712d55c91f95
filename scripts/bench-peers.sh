#!/usr/bin/env bash
# Same-run comparison with the peers users would otherwise pick: PyTorch (transformers, fp32 and
# bf16) and ONNX Runtime (PyPI's onnxruntime on its optimizer's fused BERT graph, fp32 and
# quantize_dynamic int8) against the engine at budgets 1 .. 0.125, on a bert-base-shaped model:
# 8 x 128, 1 x 128, 1 x 384 and the first 128 SST-2 dev sentences. Slow; not part of
# scripts/test.sh. Needs the .venv of scripts/install-deps.sh. Writes docs/bench/peers.{json,md}.
#   scripts/bench-peers.sh
#   REPEATS=3 THREADS=2 scripts/bench-peers.sh
#   PRECISIONS=fp32,int8 WORKLOADS=len128,sst2-dev PAIRS=3 scripts/bench-peers.sh
# PAIRS (default 5): back-to-back peer/topserve pairs at budget 1, whose ratios do not depend on
# the machine drifting between rows.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
precisions=${PRECISIONS:-fp32,bf16,int8}
# shellcheck source=scripts/python-env.sh
source scripts/python-env.sh
if ! "$py" -c 'import onnxruntime, transformers' 2>/dev/null; then
  echo "bench-peers: ONNX Runtime or transformers is missing from $py; run scripts/install-deps.sh --bench" >&2
  exit 1
fi
# shellcheck source=scripts/bench-env.sh
source scripts/bench-env.sh
"$py" bench/peers/peers.py --model "$model" --out "$build/peers" --threads "$threads" \
  --repeats "$repeats" --sst2 "$shared/data/sst2/dev.tsv" --precisions "$precisions" \
  ${WORKLOADS:+--workloads "$WORKLOADS"} --pairs "${PAIRS:-5}" --engine-bench "$build/bench/engine_bench" \
  --json docs/bench/peers.json --md docs/bench/peers.md \
  --command "scripts/bench-peers.sh (REPEATS=$repeats THREADS=$threads PRECISIONS=$precisions)" >/dev/null
echo "wrote docs/bench/peers.{json,md}"
