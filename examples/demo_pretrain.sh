#!/usr/bin/env bash
# Train the first stage of a tiny two-model series on the shipped Shakespeare corpus, on CPU.
# About 1-2 minutes on two idle cores; the loss falls from ln(50257) ~ 10.8 to about 6.
#
#   bash examples/demo_pretrain.sh [WORKDIR]        (default: ./demo-pretrain)
#
# Then look at WORKDIR/run/metrics.jsonl, `tensorboard --logdir WORKDIR/run/tensorboard`, or
# re-run the last command: it finds the finished run and says so (re-running an interrupted one
# resumes it from its latest checkpoint).
set -euo pipefail
WORK=${1:-demo-pretrain}
GROW=${GROW:-grow}
mkdir -p "$WORK"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

# 1. Tokenize three plays with GPT-2 BPE (two for training, one held out for validation).
if [ ! -f "$WORK/shakespeare.json" ]; then
  $GROW data prepare --input shakespeare --out "$WORK/shakespeare" --max-documents 3 --valid-fraction 0.34 --workers 1
fi

# 2. Plan a 2M -> 4M series at sequence 128 with a deliberately tiny budget (120K scratch tokens for
#    4M, so stage 1 trains on 60K tokens: 59 steps of 8 x 128 tokens), 5 warmup steps.
if [ ! -f "$WORK/plan.yaml" ]; then
  $GROW plan --sizes 2M,4M --seq-len 128 --tokens 120K --global-batch 8 --micro-batch 4 --warmup-min 5 \
    --out "$WORK/plan.yaml"
fi

# 3. Train stage 1 (2M) from scratch: log every 5 steps, validate every 20, checkpoint every 30.
$GROW pretrain --plan "$WORK/plan.yaml" --stage 1 --data "$WORK/shakespeare" --out "$WORK/run" \
  --log-interval 5 --eval-interval 20 --eval-iters 2 --save-interval 30
