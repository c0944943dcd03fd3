#!/usr/bin/env bash
# Several nodes without a scheduler: run this same command on every node.
#
#   MASTER_ADDR=node0 NNODES=4 bash examples/pretrain_multinode.sh PLAN STAGE DATA_PREFIX OUT_DIR [flags]
#
# torchrun's c10d rendezvous on MASTER_ADDR:MASTER_PORT pairs the nodes (any node may start first);
# DATA_PREFIX and OUT_DIR must be on a filesystem every node sees.
set -euo pipefail
PLAN=$1 STAGE=$2 DATA=$3 OUT=$4
shift 4
: "${MASTER_ADDR:?set MASTER_ADDR to the hostname of the first node}"
: "${NNODES:?set NNODES to the number of nodes}"
GPUS=${GPUS:-$(nvidia-smi --list-gpus | wc -l)}
export CUDA_DEVICE_MAX_CONNECTIONS=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
torchrun --nnodes "$NNODES" --nproc-per-node "$GPUS" \
  --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv-id "${RDZV_ID:-grow-$STAGE}" \
  -m grow_cli pretrain --plan "$PLAN" --stage "$STAGE" --data "$DATA" --out "$OUT" "$@"
