#!/usr/bin/env bash
# Same-run comparison with the peers users would otherwise pick: PyTorch fp32 and ONNX Runtime fp32
# and int8 (dynamic quantization) against the engine at budgets 1 .. 0.125, on a bert-base-shaped
# model, batch 8 x 128, 1 and 2 threads. Slow; not part of scripts/test.sh. Needs
# `scripts/install-deps.sh --bench` (ONNX Runtime from npm). Writes docs/bench/peers.{json,md}.
#   scripts/bench-peers.sh
#   REPEATS=3 THREADS=2 scripts/bench-peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
build=${BUILD_DIR:-build-bench}
repeats=${REPEATS:-5}
threads=${THREADS:-1,2}
if [ ! -d bench/peers/node_modules/onnxruntime-node ]; then
  echo "bench-peers: ONNX Runtime is missing; run scripts/install-deps.sh --bench" >&2
  exit 1
fi
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTOPSERVE_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target engine_bench
model="$build/models/bert-base-cls"
[ -f "$model/model.safetensors" ] || /usr/bin/python3 tools/gen_model.py --out "$model" --preset bert-base --task cls --seed 5 --std 0.02
mkdir -p docs/bench
/usr/bin/python3 bench/peers/peers.py --model "$model" --out "$build/peers" --threads "$threads" \
  --repeats "$repeats" --engine-bench "$build/bench/engine_bench" --json docs/bench/peers.json \
  --md docs/bench/peers.md --command "scripts/bench-peers.sh (REPEATS=$repeats THREADS=$threads)" >/dev/null
echo "wrote docs/bench/peers.{json,md}"
