#!/usr/bin/env bash
# The demo SST-2 model: a small BERT (4 layers, hidden 256, 4 heads, FFN 1024, bert-base-uncased
# vocabulary) pre-trained from scratch with masked-LM on the SST-2 train sentences + SQuAD dev contexts,
# fine-tuned on SST-2 train (the teacher), then pruned with ToP at 2x, 4x and 8x real-length FLOPs
# reduction (one student, one schedule per target); baselines at the same FLOPs; evaluation on SST-2
# dev; the result is copied to models/sst2-small/.
#
# Run from the repository root:   training/recipes/sst2_small.sh
# Every stage skips when its output exists and resumes from its checkpoint when interrupted.
# Knobs (environment): THREADS (per job, default 1), PARALLEL=1 runs the two pruning trainings at
# once, MLM_STEPS, FT_EPOCHS, PRUNE_STEPS, RUN (work directory, default training/.cache/runs/sst2-small).
set -euo pipefail
cd "$(dirname "$0")/../.."

# shellcheck source=scripts/python-env.sh
source scripts/python-env.sh
PY=$py
THREADS=${THREADS:-1}
PARALLEL=${PARALLEL:-1}
MLM_STEPS=${MLM_STEPS:-400}
FT_EPOCHS=${FT_EPOCHS:-0.5}
PRUNE_STEPS=${PRUNE_STEPS:-900}
RUN=${RUN:-training/.cache/runs/sst2-small}
SHIP=${SHIP:-models/sst2-small}
DATA=../shared/data
export OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=passive
NICE="nice -n 10"
TARGETS=0.5,0.25,0.125
mkdir -p "$RUN"

# 1. masked-LM pre-training (random init)
[ -f "$RUN/mlm-model/model.safetensors" ] || $NICE $PY training/pretrain_mlm.py \
  --work "$RUN/mlm" --out "$RUN/mlm-model" --layers 4 --hidden 256 --heads 4 --ffn 1024 \
  --seq-len 128 --max-pos 128 --steps "$MLM_STEPS" --schedule-steps 1000 --batch-size 16 --lr 5e-4 --threads "$THREADS"

# 2. fine-tuning on SST-2 train -> the teacher
[ -f "$RUN/teacher/model.safetensors" ] || $NICE $PY training/finetune.py \
  --model "$RUN/mlm-model" --out "$RUN/teacher" --work "$RUN/ft" --epochs "$FT_EPOCHS" \
  --batch-size 32 --lr 1e-4 --max-len 64 --threads "$THREADS"

# 3. ToP (ranking distillation + coarse-to-fine gates + FLOPs constraint) and the ablation without
#    ranking distillation; one student per method serving the three targets.
prune() {  # method out
  [ -f "$2/model.safetensors" ] || $NICE $PY training/top_train.py --teacher "$RUN/teacher" \
    --method "$1" --work "$RUN/$1" --out "$2" --targets $TARGETS --default-target 0.25 \
    --steps "$PRUNE_STEPS" --batch-size 32 --threads "$THREADS" --eval-every 500
}
$NICE $PY training/top_train.py --teacher "$RUN/teacher" --work "$RUN/prepare" --out "$RUN/unused" \
  --threads "$THREADS" --prepare-only   # teacher outputs + calibration lengths, cached once
if [ "$PARALLEL" = 1 ]; then
  prune top "$RUN/top-model" > "$RUN/top.log" 2>&1 &
  p1=$!
  prune gates-no-ranking "$RUN/norank-model" > "$RUN/norank.log" 2>&1 &
  p2=$!
  wait $p1; wait $p2
else
  prune top "$RUN/top-model"
  prune gates-no-ranking "$RUN/norank-model"
fi

# 4. untrained attention top-k baselines on the teacher: ToP's shape and a uniform shape
mkdir -p "$RUN/baselines" "$RUN/eval"
for x in 2x:0.5 4x:0.25 8x:0.125; do
  r=${x%%:*}; t=${x##*:}
  $PY training/make_baseline.py --model "$RUN/teacher" --shape-from "$RUN/top-model/schedules/top-$r.yaml" \
    --target "$t" --out "$RUN/baselines/topk-untrained-$r.yaml"
  $PY training/make_baseline.py --model "$RUN/teacher" --uniform --target "$t" \
    --out "$RUN/baselines/topk-untrained-uniform-$r.yaml"
done

# 5. evaluation on SST-2 dev (the deployable rule; FLOPs from training/cost.py)
ev() { $NICE $PY training/evaluate.py --threads "$THREADS" --model "$1" --json "$RUN/eval/$2.json" "${@:3}"; }
ev "$RUN/teacher" teacher --unpruned
for r in 2x 4x 8x; do
  ev "$RUN/top-model" "top-$r" --schedule "$RUN/top-model/schedules/top-$r.yaml"
  ev "$RUN/norank-model" "norank-$r" --schedule "$RUN/norank-model/schedules/gates-no-ranking-$r.yaml"
  ev "$RUN/teacher" "topk-$r" --schedule "$RUN/baselines/topk-untrained-$r.yaml"
  ev "$RUN/teacher" "topk-uniform-$r" --schedule "$RUN/baselines/topk-untrained-uniform-$r.yaml"
done
ev "$RUN/top-model" top-unpruned --unpruned
$PY training/report.py --teacher "$RUN/eval/teacher.json" --out "$RUN/eval/table.md" \
  "ToP 2x=$RUN/eval/top-2x.json" "gates, no ranking 2x=$RUN/eval/norank-2x.json" \
  "top-k untrained, ToP shape 2x=$RUN/eval/topk-2x.json" "top-k untrained, uniform 2x=$RUN/eval/topk-uniform-2x.json" \
  "ToP 4x=$RUN/eval/top-4x.json" "gates, no ranking 4x=$RUN/eval/norank-4x.json" \
  "top-k untrained, ToP shape 4x=$RUN/eval/topk-4x.json" "top-k untrained, uniform 4x=$RUN/eval/topk-uniform-4x.json" \
  "ToP 8x=$RUN/eval/top-8x.json" "gates, no ranking 8x=$RUN/eval/norank-8x.json" \
  "top-k untrained, ToP shape 8x=$RUN/eval/topk-8x.json" "top-k untrained, uniform 8x=$RUN/eval/topk-uniform-8x.json" \
  "ToP student, unpruned=$RUN/eval/top-unpruned.json"

# 6. ship the ToP student (fp16) with its schedules (pruning.yaml = 4x)
mkdir -p "$SHIP/schedules"
cp "$RUN/top-model/"{config.json,model.safetensors,vocab.txt,tokenizer_config.json,pruning.yaml} "$SHIP/"
cp "$RUN/top-model/schedules/"top-*.yaml "$SHIP/schedules/"
du -cb "$SHIP"/* "$SHIP"/schedules/* | tail -1
