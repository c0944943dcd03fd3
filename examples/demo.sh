#!/usr/bin/env bash
# The whole grow pipeline in miniature, on CPU, with the shipped Shakespeare corpus:
#   prepare data -> plan a 2M -> 4M series -> train 2M -> expand 2M into 4M (verified) ->
#   train 4M from the expanded weights -> evaluate the series (table + plots).
# A few minutes on two idle cores. Re-running continues where a killed run stopped: finished
# steps are skipped, an interrupted training resumes from its last checkpoint.
#
#   bash examples/demo.sh [WORKDIR]          (make demo uses ./demo)
set -euo pipefail
WORK=${1:-demo}
GROW=${GROW:-grow}
command -v "$GROW" >/dev/null || GROW="$(dirname "$0")/../.venv/bin/grow"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$WORK"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/6 tokenize the shipped corpus (GPT-2 BPE) into megatron indexed data"
[ -f "$WORK/data/shakespeare.json" ] || \
  $GROW data prepare --input shakespeare --out "$WORK/data/shakespeare" --valid-fraction 0.05

step "2/6 plan the reference series (1B -> 8B at 2x Chinchilla), then the 2M -> 4M series we train here"
$GROW plan --max 8B --chinchilla 2x --plot "$WORK/reference-plan.png" --force
[ -f "$WORK/plan.yaml" ] || \
  $GROW plan --sizes 2M,4M --seq-len 128 --tokens 160K --global-batch 8 --micro-batch 4 --warmup-min 5 \
    --out "$WORK/plan.yaml" --plot "$WORK/plan.png"

step "3/6 train stage 1 (2M) from scratch"
$GROW pretrain --plan "$WORK/plan.yaml" --stage 1 --data "$WORK/data/shakespeare" --out "$WORK/runs/2M" \
  --log-interval 10 --eval-interval 40 --eval-iters 4 --save-interval 40

step "4/6 expand the trained 2M into the 4M shape (bert2BERT AKI), verified on held-out text"
[ -d "$WORK/ckpt/4M-init" ] || \
  $GROW expand "$WORK/runs/2M" --plan "$WORK/plan.yaml" --stage 2 --out "$WORK/ckpt/4M-init" \
    --verify --data "$WORK/data/shakespeare"

step "5/6 train stage 2 (4M) from the expanded weights, on the rest of the series budget"
$GROW pretrain --plan "$WORK/plan.yaml" --stage 2 --init "$WORK/ckpt/4M-init" --data "$WORK/data/shakespeare" \
  --out "$WORK/runs/4M" --log-interval 10 --eval-interval 40 --eval-iters 4 --save-interval 40

step "6/6 evaluate the series: perplexity, layer diagnostics, series table and plots"
$GROW eval "$WORK/runs/2M" "$WORK/runs/4M" --data "$WORK/data/shakespeare" --diag-tokens 4096 \
  --markdown "$WORK/series.md" --plots "$WORK/plots" --force

echo
echo "Done. Plans: $WORK/reference-plan.png, $WORK/plan.yaml ($WORK/plan.png); runs: $WORK/runs/*/metrics.jsonl;"
echo "series table: $WORK/series.md; figures: $WORK/plots/"
