"""Fused linear + log-softmax + divergence: per-token losses of `hidden @ head.T` against labels
or a teacher, without ever holding an [N, V] (or [T, V]) tensor. See kernels/README.md.

Two passes over the vocabulary in tiles. Pass 1 (forward) accumulates per-row online-softmax
sums (grow_kernels.sums), all-reduced over the vocabulary-parallel group, which give the loss and
the statistics in closed form. Pass 2 (backward) recomputes each logits tile, forms dloss/dz from
the saved log-sum-exps and multiplies it straight into the gradients of hidden and head. The
teacher's logits are recomputed per tile too and get no gradient.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import torch
import torch.distributed as dist

from grow_kernels.problem import Direction, Problem, make_problem
from grow_kernels.sums import Normalisers, TokenStats, combine, finish


def linear_divergence(
    hidden: torch.Tensor,
    head: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    direction: Direction = "forward",
    group: dist.ProcessGroup | None = None,
    token_chunk: int = 512,
    vocab_chunk: int = 8192,
    backend: str | None = None,
) -> TokenStats:
    """Per-row loss and softmax statistics of z = hidden @ head.T, differentiable in `loss`.

    Args:
        hidden: [N, h] student states, K layers' T tokens stacked layer-major (n = k·T + t),
            already through the final norm.
        head: [V, h] the LM head, or this rank's vocabulary shard of it (see `group`).
        labels: [N] global token ids: the cross-entropy target (only a statistic with a teacher).
        teacher_hidden, teacher_head: [T, h_t] and [V, h_t] (same sharding as `head`); the teacher
            logits are recomputed tile by tile. Student row n is compared with teacher row n mod T.
        teacher_logits: [T, V] precomputed teacher logits (this shard's columns), for small cases.
        direction: "forward" KL(p_teacher ‖ p_student) or "reverse" KL(p_student ‖ p_teacher).
        group: the tensor-parallel group over which `head` is split by vocabulary (rank r holds
            rows r·V .. (r+1)·V - 1). Sums are all-reduced over it, so every rank gets the full
            statistics, and the gradient of `hidden` is all-reduced in backward: pass the
            replicated hidden states directly, not through a copy-to-model-parallel region.
        token_chunk, vocab_chunk: reference tile sizes; they bound memory, not the result.
        backend: "triton" or "reference" (tests and benchmarks); default Triton on CUDA, the
            reference elsewhere.
    """
    if token_chunk < 1 or vocab_chunk < 1:
        raise ValueError("token_chunk and vocab_chunk must be positive")
    shard = 0 if group is None else dist.get_rank(group)
    problem = make_problem(hidden, head, labels, teacher_hidden, teacher_head, teacher_logits, direction,
                           shard * head.size(0))
    impl = _backend(backend, hidden.device)
    loss, *rest = _LinearDivergence.apply(hidden, head, problem, group, impl, (token_chunk, vocab_chunk))
    return TokenStats(loss, *rest)


def _backend(name: str | None, device: torch.device) -> ModuleType:
    """The module providing `partials(problem, *tiles)` and `gradients(problem, norm, g, *tiles)`."""
    if name is None:  # a CUDA machine without triton (not the `gpu` extra) still gets the reference
        name = "triton" if device.type == "cuda" and importlib.util.find_spec("triton") is not None else "reference"
    if name == "triton":
        from grow_kernels import triton_backend

        return triton_backend
    if name == "reference":
        from grow_kernels import reference

        return reference
    raise ValueError(f"backend must be 'triton' or 'reference', got {name!r}")


class _LinearDivergence(torch.autograd.Function):
    """hidden and head are the differentiable inputs; `problem` holds them (and the target)."""

    @staticmethod
    def forward(ctx, hidden, head, problem: Problem, group, impl: ModuleType, tiles: tuple[int, int]):
        with torch.no_grad():
            sums = combine(impl.partials(problem, *tiles), group)
            stats, norm = finish(problem, sums)
        ctx.problem, ctx.group, ctx.impl, ctx.tiles, ctx.norm = problem, group, impl, tiles, norm
        ctx.dtypes = hidden.dtype, head.dtype
        ctx.mark_non_differentiable(stats.logsumexp, stats.entropy, stats.argmax, stats.target_logit, stats.kl)
        loss = stats.loss.clone()  # its own tensor: `kl` beside it (the same values) has no gradient
        return loss, stats.logsumexp, stats.entropy, stats.argmax, stats.target_logit, stats.kl

    @staticmethod
    def backward(ctx, grad_loss, *_):
        problem: Problem = ctx.problem
        norm: Normalisers = ctx.norm
        with torch.no_grad():
            grad_hidden, grad_head = ctx.impl.gradients(problem, norm, grad_loss.float().contiguous(), *ctx.tiles)
            if ctx.group is not None and dist.get_world_size(ctx.group) > 1:
                dist.all_reduce(grad_hidden, group=ctx.group)
        return grad_hidden.to(ctx.dtypes[0]), grad_head.to(ctx.dtypes[1]), None, None, None, None
