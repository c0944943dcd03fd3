"""`grow pretrain`: the training engine on megatron-core, and how to launch it (torchrun, SLURM).

The loop is megatron-core used as a library (GPTModel -> Float16Module -> DDP -> Megatron
optimizer -> OptimizerParamScheduler, the pipeline schedules for the forward/backward pass).
What is trained is an `Objective` (objective.py): the LM cross-entropy here, the
self-distillation loss of `grow distill` next, through the same loop.

Modules: config (resolved run settings), objective (what a step optimises), engine (model,
optimizer and one train/eval step), schedule (optimizer and LR schedule settings),
checkpointing (train state on disk, resume, retention, the run directory), metrics (jsonl,
TensorBoard, console, FLOPs/MFU), signals (pre-emption), loop (the run), slurm (sbatch scripts),
cli. The megatron-core optimizer-resume fix lives with the other release differences in
`grow_cli.runtime.megatron_compat`.
"""
