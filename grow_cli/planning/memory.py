"""Memory per GPU of a Megatron training run: parameters, optimizer state and activations.

Model state (mixed-precision Adam with Megatron's distributed optimizer): bf16 weights (2 bytes)
and fp32 gradients (4) on every data-parallel rank, fp32 master weights and two Adam moments
(12) sharded over DP: 6 + 12/DP bytes per parameter the GPU holds (18 at DP=1).

Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models"): 34·s·b·h/t bytes per layer with sequence parallelism and selective recomputation —
flash/SDPA attention never stores the s² scores either — plus the fp32 logits the loss keeps,
4·s·b·V/t bytes, on the last pipeline stage. With the 1F1B schedule the first pipeline stage
holds min(microbatches, PP) microbatches in flight, the last stage one.

Excluded: the CUDA context and allocator slack (a few GiB) and communication buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

from grow_cli.errors import GrowError
from grow_cli.layout import Layout
from grow_cli.shape import ModelShape
from grow_cli.units import GIB

ACTIVATION_BYTES_PER_LAYER = 34  # x s·b·h/t: TP + sequence parallel + selective recompute


@dataclass(frozen=True)
class PipelineParams:
    """Parameters held by one GPU of the first and of the last pipeline stage."""

    first: int
    last: int


def params_per_gpu(shape: ModelShape, tp: int = 1, pp: int = 1) -> PipelineParams:
    """Exact per-GPU parameter counts as Megatron shards them.

    Linear weights and the (padded) vocabulary split over TP; RMSNorm gains are replicated.
    Layers split evenly over PP; the first stage holds the input embedding, the last the final
    norm and the output layer (with tied embeddings Megatron keeps a copy there for PP > 1).
    """
    shape.check_layout(tp, pp)
    h, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_groups * shape.head_dim
    linear = h * q + 2 * h * kv + q * h + 3 * h * shape.ffn
    layer = linear // tp + 2 * h
    body = (shape.layers // pp) * layer
    vocab_shard = shape.padded_vocab(tp) // tp * h
    output = 0 if shape.tied_embeddings else vocab_shard
    if pp == 1:
        single = body + vocab_shard + h + output
        return PipelineParams(first=single, last=single)
    return PipelineParams(first=body + vocab_shard, last=body + h + vocab_shard)


def check_batch(global_batch: int, micro_batch: int, dp: int) -> int:
    """Microbatches per optimizer step on each DP rank; the batch sizes must divide evenly."""
    if global_batch <= 0 or micro_batch <= 0:
        raise GrowError(f"batch sizes must be positive (global {global_batch}, micro {micro_batch})")
    if global_batch % (micro_batch * dp):
        raise GrowError(
            f"global batch {global_batch} is not divisible by micro batch {micro_batch} x DP {dp}; "
            f"pick a global batch that is a multiple of {micro_batch * dp}"
        )
    return global_batch // (micro_batch * dp)


@dataclass(frozen=True)
class MemoryEstimate:
    """The most loaded GPU: which pipeline stage it serves and what its memory holds."""

    stage: str  # "first" or "last" pipeline stage ("first" when PP = 1)
    params: int
    model_state_gib: float  # weights, gradients, optimizer state
    activations_gib: float

    @property
    def total_gib(self) -> float:
        return self.model_state_gib + self.activations_gib


def estimate_memory(shape: ModelShape, layout: Layout, micro_batch: int, global_batch: int) -> MemoryEstimate:
    """Peak training memory per GPU of `shape` at `layout` (see the module docstring)."""
    tp, pp, dp = layout.tp, layout.pp, layout.dp
    microbatches = check_batch(global_batch, micro_batch, dp)
    params = params_per_gpu(shape, tp, pp)
    state_bytes = 6 + 12 / dp
    s, b = shape.seq_len, micro_batch
    per_layer = ACTIVATION_BYTES_PER_LAYER * s * b * shape.hidden / tp
    stage_layers = shape.layers // pp
    logits = 4 * s * b * shape.padded_vocab(tp) / tp
    first_activations = stage_layers * per_layer * min(microbatches, pp) + (logits if pp == 1 else 0)
    first = MemoryEstimate("first", params.first, params.first * state_bytes / GIB, first_activations / GIB)
    if pp == 1:
        return first
    last = MemoryEstimate("last", params.last, params.last * state_bytes / GIB, (stage_layers * per_layer + logits) / GIB)
    return max(first, last, key=lambda m: m.total_gib)


def smallest_fitting_layout(
    shape: ModelShape, capacity_gib: float, micro_batch: int, global_batch: int, max_gpus: int = 4096
) -> tuple[Layout, MemoryEstimate] | None:
    """The layout on the fewest GPUs (a power of two) whose estimate fits `capacity_gib`.

    None if nothing up to `max_gpus` fits. Among equal GPU counts it prefers data parallelism
    (cheapest communication), then TP within a node (up to 8), then pipeline stages.
    """
    tps = shape.feasible_tp(limit=8)
    pps = [p for p in range(1, shape.layers + 1) if shape.layers % p == 0]
    gpus = 1
    while gpus <= max_gpus:
        candidates = sorted(
            ((tp, pp) for tp in tps for pp in pps if gpus % (tp * pp) == 0),
            key=lambda c: (c[0] * c[1], c[1]),
        )
        for tp, pp in candidates:
            layout = Layout(tp=tp, pp=pp, dp=gpus // (tp * pp))
            if global_batch % (micro_batch * layout.dp):
                continue
            estimate = estimate_memory(shape, layout, micro_batch, global_batch)
            if estimate.total_gib <= capacity_gib:
                return layout, estimate
        gpus *= 2
    return None


def largest_micro_batch(shape: ModelShape, layout: Layout, global_batch: int, capacity_gib: float) -> int | None:
    """The largest micro batch that divides the global batch over DP and whose estimate fits.

    Larger micro batches run larger GEMMs (higher utilisation) for more activation memory; the
    estimate is `estimate_memory`'s, so the choice is only as good as its activation model.
    None when not even one sequence per micro batch fits.
    """
    per_rank = global_batch // layout.dp
    for micro in sorted((b for b in range(1, per_rank + 1) if per_rank % b == 0), reverse=True):
        if global_batch % (micro * layout.dp) == 0 and estimate_memory(shape, layout, micro, global_batch).total_gib <= capacity_gib:
            return micro
    return None
