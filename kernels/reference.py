"""The PyTorch reference of the fused op: the same two passes as the Triton kernels, one
[token_chunk, vocab_chunk] logits tile (two with a teacher) at a time.

Loop order: teacher-token tiles, then vocabulary tiles, then the K student layers. A teacher tile
is computed once and serves all K layers, so the teacher's matmul work is T·V·h_t, not N·V·h_t.
Logits come from a matmul in the input dtype (as the model's output layer does); everything after,
including the gradients' sums, is float32.
"""

from __future__ import annotations

import torch

from grow_kernels.problem import Problem
from grow_kernels.sums import Normalisers, Partials


def _tiles(problem: Problem, token_chunk: int, vocab_chunk: int):
    """(teacher token slice, vocabulary slice, teacher logits tile or None) in loop order."""
    for start in range(0, problem.tokens, token_chunk):
        tokens = slice(start, min(start + token_chunk, problem.tokens))
        for first in range(0, problem.vocab, vocab_chunk):
            vocab = slice(first, min(first + vocab_chunk, problem.vocab))
            yield tokens, vocab, _teacher_logits(problem, tokens, vocab)


def _teacher_logits(problem: Problem, tokens: slice, vocab: slice) -> torch.Tensor | None:
    if problem.teacher_logits is not None:
        return problem.teacher_logits[tokens, vocab].float()
    if problem.teacher_hidden is not None:
        return (problem.teacher_hidden[tokens] @ problem.teacher_head[vocab].T).float()
    return None


def _student_rows(problem: Problem, tokens: slice):
    for layer in range(problem.layers):
        yield slice(layer * problem.tokens + tokens.start, layer * problem.tokens + tokens.stop)


def partials(problem: Problem, token_chunk: int, vocab_chunk: int) -> Partials:
    """Pass 1: this shard's online sums (see grow_kernels.sums)."""
    p = Partials.empty(problem)
    for tokens, vocab, u in _tiles(problem, token_chunk, vocab_chunk):
        if u is not None:
            u_max = torch.maximum(p.u_max[tokens], u.amax(dim=1))
            u_scale = torch.exp(p.u_max[tokens] - u_max)
            u_weights = torch.exp(u - u_max[:, None])
            p.u_sum[tokens] = p.u_sum[tokens] * u_scale + u_weights.sum(dim=1)
            p.u_dot[tokens] = p.u_dot[tokens] * u_scale + (u_weights * u).sum(dim=1)
            p.u_max[tokens] = u_max
        for rows in _student_rows(problem, tokens):
            z = (problem.hidden[rows] @ problem.head[vocab].T).float()
            block_max, block_arg = z.max(dim=1)
            z_max = torch.maximum(p.z_max[rows], block_max)
            scale = torch.exp(p.z_max[rows] - z_max)
            weights = torch.exp(z - z_max[:, None])
            p.z_sum[rows] = p.z_sum[rows] * scale + weights.sum(dim=1)
            p.z_dot[rows] = p.z_dot[rows] * scale + (weights * z).sum(dim=1)
            better = block_max > p.z_max[rows]  # strict: ties keep the earlier (first) id
            p.best[rows] = torch.where(better, block_arg + vocab.start + problem.vocab_offset, p.best[rows])
            p.z_max[rows] = z_max
            if problem.labels is not None:
                local = problem.labels[rows] - problem.vocab_offset - vocab.start
                inside = (local >= 0) & (local < z.size(1))
                picked = z.gather(1, local.clamp(0, z.size(1) - 1)[:, None])[:, 0]
                p.target[rows] += torch.where(inside, picked, 0.0)
            if u is not None:
                p.z_cross[rows] = p.z_cross[rows] * scale + (weights * u).sum(dim=1)
                p.u_cross[rows] = p.u_cross[rows] * u_scale + (u_weights * z).sum(dim=1)
    return p


def _logit_grad(problem: Problem, z: torch.Tensor, u: torch.Tensor | None, rows: slice, tokens: slice,
               vocab: slice, norm: Normalisers) -> torch.Tensor:
    """d loss_n / d z_n,v on one tile (float32), before scaling by the loss's incoming gradient.

    cross-entropy: p - onehot(label);  KL(q‖p): p - q;  KL(p‖q): p · (log p - log q - KL)."""
    log_p = z - norm.logsumexp[rows, None]
    p = torch.exp(log_p)
    if u is None:
        local = problem.labels[rows] - problem.vocab_offset - vocab.start
        hit = torch.arange(z.size(1), device=z.device)[None, :] == local[:, None]
        return p - hit.float()
    log_q = u - norm.teacher_logsumexp[tokens, None]
    if problem.direction == "forward":
        return p - torch.exp(log_q)
    return p * (log_p - log_q - norm.kl[rows, None])


def gradients(problem: Problem, norm: Normalisers, grad_loss: torch.Tensor, token_chunk: int,
              vocab_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 2: float32 d(Σ grad_loss·loss)/d hidden [N, h] (this shard's part) and /d head [V, h]."""
    dtype = problem.hidden.dtype
    grad_hidden = torch.zeros(problem.hidden.shape, dtype=torch.float32, device=problem.hidden.device)
    grad_head = torch.zeros(problem.head.shape, dtype=torch.float32, device=problem.head.device)
    for tokens, vocab, u in _tiles(problem, token_chunk, vocab_chunk):
        for rows in _student_rows(problem, tokens):
            z = (problem.hidden[rows] @ problem.head[vocab].T).float()
            # dz rounds to the input dtype like a bf16 backward's would; the products then sum in
            # float32 across tiles (bf16 operands multiply exactly in fp32), as the kernel does.
            dz = (_logit_grad(problem, z, u, rows, tokens, vocab, norm) * grad_loss[rows, None]).to(dtype).float()
            grad_hidden[rows] += dz @ problem.head[vocab].float()
            grad_head[vocab] += dz.T @ problem.hidden[rows].float()
    return grad_hidden, grad_head
