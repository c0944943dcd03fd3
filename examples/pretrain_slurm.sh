#!/usr/bin/env bash
# SLURM: write (and submit) the sbatch script for one stage with `grow slurm`.
#
#   bash examples/pretrain_slurm.sh PLAN STAGE DATA_PREFIX OUT_DIR NODES [extra flags]
#
# The options are checked for the allocation (NODES x 8 GPUs, CUDA) before anything is written;
# the script lands in OUT_DIR/pretrain.sbatch, logs in OUT_DIR/slurm-<job>.out. SLURM signals the
# job 120 s before its time limit: grow checkpoints, exits 0, and the script requeues the job,
# which resumes from the checkpoint. Drop --submit to only write the script.
set -euo pipefail
PLAN=$1 STAGE=$2 DATA=$3 OUT=$4 NODES=$5
shift 5
grow slurm --plan "$PLAN" --stage "$STAGE" --data "$DATA" --out "$OUT" \
  --nodes "$NODES" --gpus-per-node "${GPUS_PER_NODE:-8}" --time "${TIME:-24:00:00}" \
  ${PARTITION:+--partition "$PARTITION"} ${ACCOUNT:+--account "$ACCOUNT"} \
  --setup "source ${VENV:-$PWD/.venv}/bin/activate" \
  --save-interval 500 --submit "$@"
