#!/usr/bin/env bash
# Builds topserve, then runs the shipped SST-2 model (models/sst2-small) and a generated QA model on
# a few inputs with the command-line front end, printing JSON with per-stage timings.
#   scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
build=${BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc)" --target topserve-cli

cls_model=models/sst2-small
if [ ! -f "$cls_model/model.safetensors" ]; then
  cls_model="$build/models/random-cls"
  [ -f "$cls_model/model.safetensors" ] || /usr/bin/python3 tools/gen_model.py --out "$cls_model" --preset tiny --task cls
fi
qa_model="$build/models/random-qa"
[ -f "$qa_model/model.safetensors" ] || /usr/bin/python3 tools/gen_model.py --out "$qa_model" --preset tiny --task qa

echo "== classify with $cls_model"
"$build/tools/topserve-cli" --model "$cls_model" classify \
  "a gorgeous, witty, seductive movie ." "the plot is nothing but boilerplate clichés from start to finish ."
echo "== answer with $qa_model (random weights: the span is arbitrary, the plumbing is real)"
"$build/tools/topserve-cli" --model "$qa_model" answer \
  --question "Which team won Super Bowl 50?" \
  --context "Super Bowl 50 was an American football game. The Denver Broncos defeated the Carolina Panthers 24-10 to earn their third Super Bowl title."
