#!/usr/bin/env bash
# The method in miniature, on CPU, with the shipped Shakespeare corpus:
#   train a 2K-token byte-level BPE -> prepare the data -> plan a 0.5M -> 1M -> 2M series
#   (budgets equal in real FLOPs, Megatron convention, output layer included) -> `grow series`
#   with the from-scratch baselines, twice (two seeds, so the noise is visible) -> the verdict.
# Measured: 8 min 17 s on two idle cores (docs/benchmarks.md); `--quick` runs the same pipeline
# on a smaller corpus and budget in about a minute (tests/test_demo.py, in CI). Re-running
# continues where a killed run stopped: `grow series` skips finished steps and resumes an
# interrupted training from its last checkpoint.
#
#   bash examples/demo.sh [--quick] [WORKDIR]          (make demo uses ./demo)
set -euo pipefail
QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; shift; fi
WORK=${1:-demo}
GROW=${GROW:-grow}
command -v "$GROW" >/dev/null || GROW="$(dirname "$0")/../.venv/bin/grow"
PYTHON="$(dirname "$(command -v "$GROW")")/python"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$WORK"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ "$QUICK" = 1 ]; then
  DOCS=(--max-documents 6); VOCAB=1024; SIZES=0.1M,0.2M,0.4M; SEQ=64; TOKENS=60K; BATCH=8; SEEDS="1"
  INTERVALS=(--log-interval 10 --eval-interval 20 --eval-iters 2 --save-interval 50)
else
  DOCS=(); VOCAB=2048; SIZES=0.5M,1M,2M; SEQ=128; TOKENS=500K; BATCH=16; SEEDS="1 2"
  # validation every 50 steps on 4K tokens, a checkpoint every 200 steps and the final evaluation on
  # 32K tokens: enough for the curves and the verdict, little beside training (docs/benchmarks.md)
  INTERVALS=(--log-interval 10 --eval-interval 50 --eval-iters 2 --save-interval 200 --eval-tokens 32768)
fi

step "1/5 train a $VOCAB-token byte-level BPE on the shipped corpus"
[ -f "$WORK/tokenizer/tokenizer.json" ] || \
  $GROW data tokenizer --input shakespeare "${DOCS[@]}" --vocab-size "$VOCAB" --out "$WORK/tokenizer"

step "2/5 tokenize the corpus into megatron indexed data"
[ -f "$WORK/data/shakespeare.json" ] || \
  $GROW data prepare --input shakespeare "${DOCS[@]}" --tokenizer "$WORK/tokenizer/tokenizer.json" \
    --out "$WORK/data/shakespeare" --valid-fraction 0.05

step "3/5 plan the reference series (1B -> 8B at 2x Chinchilla), then the $SIZES series we train here"
$GROW plan --max 8B --chinchilla 2x --plot "$WORK/reference-plan.png" --force
[ -f "$WORK/plan.yaml" ] || \
  $GROW plan --sizes "$SIZES" --seq-len "$SEQ" --tokens "$TOKENS" --flops-convention megatron \
    --lr-ladder 2e-3:1e-3 --global-batch "$BATCH" --micro-batch "$BATCH" --warmup-min 5 \
    --data "$WORK/data/shakespeare" --out "$WORK/plan.yaml" --plot "$WORK/plan.png"

n=4
for seed in $SEEDS; do
  step "$n/5 grow series (seed $seed): train, expand (AKI + stack), train, ..., the scratch baselines, eval, report"
  $GROW series "$WORK/plan.yaml" --data "$WORK/data/shakespeare" --out "$WORK/series-seed$seed" \
    --with-scratch --seed "$seed" "${INTERVALS[@]}"
  n=5
done

step "verdict: growth vs scratch at equal compute (real FLOPs), per seed"
"$PYTHON" - "$WORK" $SEEDS <<'EOF'
import json, sys
work, seeds = sys.argv[1], sys.argv[2:]
gaps = []
for seed in seeds:
    report = json.load(open(f"{work}/series-seed{seed}/report/series.json"))
    rows = report["members"]
    largest = [r for r in rows if r["method"] == "growth"][-1]
    scratch = next(r for r in rows if r["method"] == "scratch" and r["name"] == largest["name"])
    gap = largest["valid_loss"] - scratch["valid_loss"]
    gaps.append(gap)
    print(f"seed {seed}: {largest['name']} growth {largest['valid_loss']:.4f} at {largest['flops_total']:.3e} FLOPs, "
          f"scratch {scratch['valid_loss']:.4f} at {scratch['flops_total']:.3e}: growth {'lower' if gap < 0 else 'NOT lower'} ({gap:+.4f})")
if len(gaps) > 1:
    print(f"spread of the difference between seeds: {max(gaps) - min(gaps):.4f}")
EOF
echo
echo "Reports: $WORK/series-seed*/report/series.md (series.json, loss_vs_flops.png, compute.png, lineage.png); logs: $WORK/series-seed*/logs/"
