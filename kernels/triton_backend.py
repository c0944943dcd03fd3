"""The Triton implementation of the fused op's two passes (grow_kernels.reference is the spec).

One program per tile of BT teacher tokens. It walks the vocabulary in BV-wide tiles; per tile it
computes the teacher's logits once (kept in registers) and then, for each of the K student
layers, that layer's BT x BV logits tile (a matmul over the width in BH-wide steps). Pass 1 keeps
the per-row online sums in the output buffers (read, updated and written per tile: [BT] vectors,
negligible next to the matmul); pass 2 forms dloss/dz in registers and multiplies it into the
gradients: rows of grad_hidden belong to one program (plain read-add-write), grad_head's rows are
shared by all programs (atomic adds into a float32 buffer). Nothing of size N x V or T x V is
ever written. The kernels use only constructs TRITON_INTERPRET=1 runs, so CPU tests check them.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from grow_kernels.problem import Problem
from grow_kernels.sums import Normalisers, Partials

_NO_TEACHER, _TEACHER_STATES, _TEACHER_LOGITS = 0, 1, 2
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # read by triton when the kernels are defined


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    """a @ b with float32 accumulation. PREC "upcast": bf16 operands go in as float32, exactly
    (products of bf16 are exact in fp32), because Triton's interpreter multiplies bf16 wrongly
    (triton 3.9); on a GPU bf16 runs on the tensor cores and fp32 with IEEE precision."""
    if PREC == "upcast":
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b, input_precision=PREC)
    return out


@triton.jit
def _logits(a_ptr, a_rows, a_mask, b_ptr, b_rows, b_mask, width,
            BA: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, ROUND: tl.constexpr, PREC: tl.constexpr):
    """a[a_rows] @ b[b_rows].T in float32, -inf in masked columns; rounded to the input dtype
    first when ROUND (bf16 inputs: the model's output layer yields bf16 logits too)."""
    acc = tl.zeros((BA, BB), dtype=tl.float32)
    for start in range(0, width, BH):
        cols = start + tl.arange(0, BH)
        cmask = cols < width
        a = tl.load(a_ptr + a_rows[:, None] * width + cols[None, :], mask=a_mask[:, None] & cmask[None, :], other=0.0)
        b = tl.load(b_ptr + b_rows[:, None] * width + cols[None, :], mask=b_mask[:, None] & cmask[None, :], other=0.0)
        acc += _dot(a, tl.trans(b), PREC)
    if ROUND:
        acc = acc.to(a_ptr.dtype.element_ty).to(tl.float32)
    return tl.where(b_mask[None, :], acc, float("-inf"))


@triton.jit
def _teacher(tx_ptr, tw_ptr, tlogits_ptr, tokens, tmask, cols, cmask, V, HT, TEACHER: tl.constexpr,
             BT: tl.constexpr, BV: tl.constexpr, BH: tl.constexpr, ROUND: tl.constexpr, PREC: tl.constexpr):
    if TEACHER == 1:
        u = _logits(tx_ptr, tokens, tmask, tw_ptr, cols, cmask, HT, BT, BV, BH, ROUND, PREC)
    else:
        u = tl.load(tlogits_ptr + tokens[:, None] * V + cols[None, :], mask=tmask[:, None] & cmask[None, :],
                    other=float("-inf")).to(tl.float32)
        u = tl.where(cmask[None, :], u, float("-inf"))
    return u


@triton.jit
def _partials_kernel(x_ptr, w_ptr, labels_ptr, tx_ptr, tw_ptr, tlogits_ptr,
                     z_max_ptr, z_sum_ptr, z_dot_ptr, best_ptr, target_ptr, z_cross_ptr, u_cross_ptr,
                     u_max_ptr, u_sum_ptr, u_dot_ptr,
                     T, K, V, H, HT, offset,
                     HAS_LABELS: tl.constexpr, TEACHER: tl.constexpr, ROUND: tl.constexpr, PREC: tl.constexpr,
                     BT: tl.constexpr, BV: tl.constexpr, BH: tl.constexpr):
    tokens = tl.program_id(0) * BT + tl.arange(0, BT)
    tmask = tokens < T
    u_max = tl.full((BT,), float("-inf"), tl.float32)
    u_sum = tl.zeros((BT,), tl.float32)
    u_dot = tl.zeros((BT,), tl.float32)
    u_scale = tl.zeros((BT,), tl.float32)
    u_weights = tl.zeros((BT, BV), tl.float32)
    u0 = tl.zeros((BT, BV), tl.float32)
    for first in range(0, V, BV):
        cols = first + tl.arange(0, BV)
        cmask = cols < V
        if TEACHER != 0:
            u = _teacher(tx_ptr, tw_ptr, tlogits_ptr, tokens, tmask, cols, cmask, V, HT, TEACHER, BT, BV, BH, ROUND, PREC)
            new_max = tl.maximum(u_max, tl.max(u, axis=1))
            u_scale = tl.exp(u_max - new_max)
            u_weights = tl.exp(u - new_max[:, None])
            u0 = tl.where(cmask[None, :], u, 0.0)
            u_sum = u_sum * u_scale + tl.sum(u_weights, axis=1)
            u_dot = u_dot * u_scale + tl.sum(u_weights * u0, axis=1)
            u_max = new_max
        for layer in range(K):
            rows = layer * T + tokens
            z = _logits(x_ptr, rows, tmask, w_ptr, cols, cmask, H, BT, BV, BH, ROUND, PREC)
            z0 = tl.where(cmask[None, :], z, 0.0)
            old_max = tl.load(z_max_ptr + rows, mask=tmask, other=0.0)
            block_max = tl.max(z, axis=1)
            block_arg = tl.argmax(z, axis=1)  # first maximum within the tile
            new_max = tl.maximum(old_max, block_max)
            scale = tl.exp(old_max - new_max)
            weights = tl.exp(z - new_max[:, None])
            z_sum = tl.load(z_sum_ptr + rows, mask=tmask, other=0.0) * scale + tl.sum(weights, axis=1)
            z_dot = tl.load(z_dot_ptr + rows, mask=tmask, other=0.0) * scale + tl.sum(weights * z0, axis=1)
            best = tl.load(best_ptr + rows, mask=tmask, other=0)
            best = tl.where(block_max > old_max, block_arg.to(tl.int64) + first + offset, best)
            tl.store(z_sum_ptr + rows, z_sum, mask=tmask)
            tl.store(z_dot_ptr + rows, z_dot, mask=tmask)
            tl.store(best_ptr + rows, best, mask=tmask)
            tl.store(z_max_ptr + rows, new_max, mask=tmask)
            if HAS_LABELS:
                local = tl.load(labels_ptr + rows, mask=tmask, other=-1) - offset
                hit = cols[None, :] == local[:, None]
                target = tl.load(target_ptr + rows, mask=tmask, other=0.0) + tl.sum(tl.where(hit, z0, 0.0), axis=1)
                tl.store(target_ptr + rows, target, mask=tmask)
            if TEACHER != 0:
                z_cross = tl.load(z_cross_ptr + rows, mask=tmask, other=0.0) * scale + tl.sum(weights * u0, axis=1)
                u_cross = tl.load(u_cross_ptr + rows, mask=tmask, other=0.0) * u_scale + tl.sum(u_weights * z0, axis=1)
                tl.store(z_cross_ptr + rows, z_cross, mask=tmask)
                tl.store(u_cross_ptr + rows, u_cross, mask=tmask)
    if TEACHER != 0:
        tl.store(u_max_ptr + tokens, u_max, mask=tmask)
        tl.store(u_sum_ptr + tokens, u_sum, mask=tmask)
        tl.store(u_dot_ptr + tokens, u_dot, mask=tmask)


@triton.jit
def _gradients_kernel(x_ptr, w_ptr, labels_ptr, tx_ptr, tw_ptr, tlogits_ptr,
                      lse_ptr, lse_u_ptr, kl_ptr, grad_loss_ptr, grad_x_ptr, grad_w_ptr,
                      T, K, V, H, HT, offset,
                      TEACHER: tl.constexpr, REVERSE: tl.constexpr, ROUND: tl.constexpr, PREC: tl.constexpr,
                      BT: tl.constexpr, BV: tl.constexpr, BH: tl.constexpr):
    tokens = tl.program_id(0) * BT + tl.arange(0, BT)
    tmask = tokens < T
    log_q = tl.zeros((BT, BV), tl.float32)
    for first in range(0, V, BV):
        cols = first + tl.arange(0, BV)
        cmask = cols < V
        valid = tmask[:, None] & cmask[None, :]
        if TEACHER != 0:
            u = _teacher(tx_ptr, tw_ptr, tlogits_ptr, tokens, tmask, cols, cmask, V, HT, TEACHER, BT, BV, BH, ROUND, PREC)
            log_q = tl.where(valid, u - tl.load(lse_u_ptr + tokens, mask=tmask, other=0.0)[:, None], 0.0)
        for layer in range(K):
            rows = layer * T + tokens
            z = _logits(x_ptr, rows, tmask, w_ptr, cols, cmask, H, BT, BV, BH, ROUND, PREC)
            log_p = tl.where(valid, z - tl.load(lse_ptr + rows, mask=tmask, other=0.0)[:, None], 0.0)
            p = tl.where(valid, tl.exp(log_p), 0.0)
            if TEACHER == 0:
                local = tl.load(labels_ptr + rows, mask=tmask, other=-1) - offset
                dz = p - tl.where(cols[None, :] == local[:, None], 1.0, 0.0)
            elif REVERSE:
                dz = p * (log_p - log_q - tl.load(kl_ptr + rows, mask=tmask, other=0.0)[:, None])
            else:
                dz = p - tl.where(valid, tl.exp(log_q), 0.0)
            dz = tl.where(valid, dz * tl.load(grad_loss_ptr + rows, mask=tmask, other=0.0)[:, None], 0.0)
            dz = dz.to(x_ptr.dtype.element_ty)
            for start in range(0, H, BH):
                width = start + tl.arange(0, BH)
                hmask = width < H
                w = tl.load(w_ptr + cols[:, None] * H + width[None, :], mask=cmask[:, None] & hmask[None, :], other=0.0)
                x = tl.load(x_ptr + rows[:, None] * H + width[None, :], mask=tmask[:, None] & hmask[None, :], other=0.0)
                gx_ptrs = grad_x_ptr + rows[:, None] * H + width[None, :]
                gx_mask = tmask[:, None] & hmask[None, :]
                gx = tl.load(gx_ptrs, mask=gx_mask, other=0.0) + _dot(dz, w, PREC)
                tl.store(gx_ptrs, gx, mask=gx_mask)
                gw = _dot(tl.trans(dz), x, PREC)
                tl.atomic_add(grad_w_ptr + cols[:, None] * H + width[None, :], gw, mask=cmask[:, None] & hmask[None, :])


def _blocks(problem: Problem, token_chunk: int, vocab_chunk: int) -> dict[str, int]:
    """Block sizes: the reference's chunks rounded down to powers of two, within what tl.dot
    takes (>= 16) and what registers hold (<= 64 tokens x 128 words)."""
    def fit(value: int, cap: int) -> int:
        return max(16, min(cap, 1 << (max(value, 1).bit_length() - 1)))

    width = min(problem.hidden.size(1), problem.teacher_hidden.size(1) if problem.teacher_hidden is not None else 1 << 30)
    return {"BT": fit(token_chunk, 64), "BV": fit(vocab_chunk, 128), "BH": 64 if width >= 64 else 16}


def _common(problem: Problem) -> tuple[list, list, dict]:
    """Input pointers, the size scalars and the constexprs both kernels share."""
    x = problem.hidden
    teacher = (_TEACHER_LOGITS if problem.teacher_logits is not None
               else _TEACHER_STATES if problem.teacher_hidden is not None else _NO_TEACHER)
    inputs = [
        x, problem.head,
        problem.labels if problem.labels is not None else x,  # unused pointers: any tensor
        problem.teacher_hidden if problem.teacher_hidden is not None else x,
        problem.teacher_head if problem.teacher_head is not None else x,
        problem.teacher_logits if problem.teacher_logits is not None else x,
    ]
    teacher_width = problem.teacher_hidden.size(1) if problem.teacher_hidden is not None else 0
    sizes = [problem.tokens, problem.layers, problem.vocab, x.size(1), teacher_width, problem.vocab_offset]
    precision = "ieee" if x.dtype == torch.float32 else "upcast" if _INTERPRETED else "tf32"  # tf32: unused for bf16
    flags = {"TEACHER": teacher, "ROUND": x.dtype != torch.float32, "PREC": precision}
    return inputs, sizes, flags


def partials(problem: Problem, token_chunk: int, vocab_chunk: int) -> Partials:
    """Pass 1: this shard's online sums, as grow_kernels.reference.partials."""
    p = Partials.empty(problem)
    inputs, sizes, flags = _common(problem)
    blocks = _blocks(problem, token_chunk, vocab_chunk)
    teacher = [p.u_max, p.u_sum, p.u_dot] if problem.has_teacher else [p.z_max] * 3  # unused without a teacher
    _partials_kernel[(triton.cdiv(problem.tokens, blocks["BT"]),)](
        *inputs, p.z_max, p.z_sum, p.z_dot, p.best, p.target, p.z_cross, p.u_cross, *teacher, *sizes,
        HAS_LABELS=problem.labels is not None, **flags, **blocks,
    )
    return p


def gradients(problem: Problem, norm: Normalisers, grad_loss: torch.Tensor, token_chunk: int,
              vocab_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 2: float32 gradients of hidden (this shard's part) and head, as grow_kernels.reference."""
    inputs, sizes, flags = _common(problem)
    blocks = _blocks(problem, token_chunk, vocab_chunk)
    grad_hidden = torch.zeros(problem.hidden.shape, dtype=torch.float32, device=problem.hidden.device)
    grad_head = torch.zeros(problem.head.shape, dtype=torch.float32, device=problem.head.device)
    lse_u = norm.teacher_logsumexp if problem.has_teacher else norm.logsumexp
    _gradients_kernel[(triton.cdiv(problem.tokens, blocks["BT"]),)](
        *inputs, norm.logsumexp, lse_u, norm.kl.contiguous(), grad_loss, grad_hidden, grad_head, *sizes,
        REVERSE=problem.direction == "reverse", **flags, **blocks,
    )
    return grad_hidden, grad_head
