#!/usr/bin/env bash
# One node, all its GPUs: stage N of a plan with torchrun (world = TP x PP x DP).
#
#   bash examples/pretrain_torchrun.sh PLAN STAGE DATA_PREFIX OUT_DIR [extra grow pretrain flags]
#
# e.g. bash examples/pretrain_torchrun.sh plan.yaml 1 data/fineweb runs/1B --tp 1 --save-interval 500
# Re-running the same command after a crash or a kill resumes from OUT_DIR's latest checkpoint.
set -euo pipefail
PLAN=$1 STAGE=$2 DATA=$3 OUT=$4
shift 4
GPUS=${GPUS:-$(nvidia-smi --list-gpus | wc -l)}
export CUDA_DEVICE_MAX_CONNECTIONS=1     # Megatron's TP communication overlap relies on it
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
torchrun --standalone --nproc-per-node "$GPUS" -m grow_cli pretrain \
  --plan "$PLAN" --stage "$STAGE" --data "$DATA" --out "$OUT" "$@"
