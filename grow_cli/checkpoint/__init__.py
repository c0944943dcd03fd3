"""The on-disk layer: torch_dist checkpoints and the run directory, defined once.

atomic (outputs written under a temporary name), rundir (the run directory's names, `latest`,
pruning, the run identity, resolving a checkpoint path), layout (tensor names, shapes, packing),
checks (tensors against a shape, architecture, output vs input), tensors (partial reads,
streaming writes, tiling), metadata (the grow record and typed lineage), megatron_lm
(Megatron-LM's args, iteration and checkpoint version in common.pt), model_io (GPTModel save/load).
"""
