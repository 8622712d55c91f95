#!/usr/bin/env bash
# Builds topserve and runs the service: the shipped SST-2 model (models/sst2-small, trained here)
# and a generated question-answering model (random weights: answers are arbitrary, the plumbing is
# real). Shows a classification call and a QA call, then keeps serving until Ctrl-C.
#   scripts/demo.sh              # serve on :8500 (gRPC) and :9100 (Prometheus metrics)
#   DEMO_ONCE=1 scripts/demo.sh  # stop after the example calls
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/python-env.sh
source scripts/python-env.sh
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
build=${BUILD_DIR:-build}
port=${PORT:-8500}
metrics_port=${METRICS_PORT:-9100}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc)" --target topserve-server topserve-client topserve-cli

qa_model="$build/models/random-qa"
[ -f "$qa_model/model.safetensors" ] || "$py" tools/gen_model.py --out "$qa_model" --preset tiny --task qa

"$build/server/topserve-server" --config deploy/config.example.yaml --port "$port" \
  --metrics-port "$metrics_port" --model sst2=models/sst2-small --model "squad=$qa_model" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
client=("$build/server/topserve-client" --server "127.0.0.1:$port")
for _ in $(seq 1 120); do
  "${client[@]}" models >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { echo "demo: the server exited" >&2; exit 1; }
  sleep 0.5
done

echo "== Classify (budget 0.25 = a quarter of the unpruned FLOPs at each text's own length)"
"${client[@]}" classify --model sst2 --budget 0.25 \
  "a gorgeous , witty , seductive movie ." "the plot is nothing but boilerplate clichés from start to finish ."
echo "== Answer"
"${client[@]}" answer --model squad \
  -q "Which team won Super Bowl 50?" \
  -c "Super Bowl 50 was an American football game. The Denver Broncos defeated the Carolina Panthers 24-10 to earn their third Super Bowl title."
echo "== Metrics: curl -s 127.0.0.1:$metrics_port/metrics | grep ^topserve_"

if [ "${DEMO_ONCE:-0}" = 1 ]; then exit 0; fi
echo "Serving on 127.0.0.1:$port (gRPC) and :$metrics_port (metrics). Ctrl-C to stop."
wait "$server"
