#!/usr/bin/env bash
# ctest fixture: the trainer's eval-mode outputs on the shipped model for the first 200 SST-2 dev
# sentences, with the schedule as written and with budget 0.3 (training/evaluate.py --dump).
#   tests/make_training_parity.sh PYTHON SHARED_DIR OUT_DIR
set -euo pipefail
python=$1 shared=$2 out=$3
cd "$(dirname "$0")/.."
head -n 201 "$shared/data/sst2/dev.tsv" > "$out/parity-dev.tsv"
"$python" training/evaluate.py --model models/sst2-small --data "$out/parity-dev.tsv" \
  --dump "$out/parity-schedule.jsonl" >/dev/null
"$python" training/evaluate.py --model models/sst2-small --data "$out/parity-dev.tsv" \
  --budget 0.3 --dump "$out/parity-budget.jsonl" >/dev/null
