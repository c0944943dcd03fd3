"""Pass 1's output: per-row online-softmax sums, their reduction across vocabulary shards, and
the closed forms that turn them into losses and statistics.

Notation (per student row n, teacher row t = n mod T, this shard's vocabulary v):
z = student logits, u = teacher logits, m = max_v z, mu = max_v u,

    z_sum   = Σ e^(z-m)          z_dot   = Σ e^(z-m)·z       z_cross = Σ e^(z-m)·u
    u_sum   = Σ e^(u-mu)         u_dot   = Σ e^(u-mu)·u      u_cross = Σ e^(u-mu)·z

Sums with one shift add across shards after rescaling by e^(m_shard - m_global), so an
all-reduce of the max and then of the rescaled sums gives the full-vocabulary sums. Both
backends produce these tensors; everything after them is shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from grow_kernels.problem import Problem


@dataclass
class Partials:
    """Running sums; [N] per student row except u_max/u_sum/u_dot, [T] per teacher row.

    `z_max` doubles as the argmax's value; `best` is its (global) vocabulary id, `target` the
    label's logit where this shard holds the label and 0 elsewhere (so shards add).
    """

    z_max: torch.Tensor
    z_sum: torch.Tensor
    z_dot: torch.Tensor
    best: torch.Tensor
    target: torch.Tensor
    z_cross: torch.Tensor
    u_cross: torch.Tensor
    u_max: torch.Tensor
    u_sum: torch.Tensor
    u_dot: torch.Tensor

    @classmethod
    def empty(cls, problem: Problem) -> Partials:
        """The identity of the online update: maxima -inf, sums 0 (no teacher rows without one)."""
        device = problem.hidden.device
        rows, teacher_rows = problem.rows, problem.tokens if problem.has_teacher else 0

        def filled(count: int, value: float) -> torch.Tensor:
            return torch.full((count,), value, device=device)

        return cls(
            z_max=filled(rows, float("-inf")), z_sum=filled(rows, 0.0), z_dot=filled(rows, 0.0),
            best=torch.zeros(rows, dtype=torch.long, device=device), target=filled(rows, 0.0),
            z_cross=filled(rows, 0.0), u_cross=filled(rows, 0.0),
            u_max=filled(teacher_rows, float("-inf")), u_sum=filled(teacher_rows, 0.0), u_dot=filled(teacher_rows, 0.0),
        )


def combine(partials: Partials, group: dist.ProcessGroup | None) -> Partials:
    """The full-vocabulary sums from every shard's (new tensors; one shard: `partials` itself).

    The argmax is the smallest id among the shards that reach the global maximum, as
    torch.argmax picks the first maximum."""
    if group is None or dist.get_world_size(group) == 1:
        return partials
    p = partials
    z_max, u_max = p.z_max.clone(), p.u_max.clone()
    dist.all_reduce(z_max, op=dist.ReduceOp.MAX, group=group)
    dist.all_reduce(u_max, op=dist.ReduceOp.MAX, group=group)
    z_scale = torch.exp(p.z_max - z_max)
    u_scale = torch.exp(p.u_max - u_max)
    # u_cross is per student row but shifted by its teacher row's maximum (row n -> n mod T).
    u_scale_rows = u_scale.repeat(p.z_max.numel() // u_scale.numel()) if u_scale.numel() else torch.zeros_like(z_scale)
    row_sums = torch.stack([p.z_sum * z_scale, p.z_dot * z_scale, p.z_cross * z_scale, p.u_cross * u_scale_rows, p.target])
    teacher_sums = torch.stack([p.u_sum * u_scale, p.u_dot * u_scale])
    dist.all_reduce(row_sums, group=group)
    dist.all_reduce(teacher_sums, group=group)
    best = torch.where(p.z_max == z_max, p.best, torch.iinfo(torch.long).max)
    dist.all_reduce(best, op=dist.ReduceOp.MIN, group=group)
    z_sum, z_dot, z_cross, u_cross, target = row_sums
    u_sum, u_dot = teacher_sums
    return Partials(z_max, z_sum, z_dot, best, target, z_cross, u_cross, u_max, u_sum, u_dot)


@dataclass(frozen=True)
class TokenStats:
    """Per student row [N] (float32; `argmax` int64). `kl` is the KL of the call's direction
    (NaN without a teacher), `target_logit` NaN without labels; `loss` is `kl` with a teacher,
    else the cross-entropy of the labels, and is the only output with a gradient."""

    loss: torch.Tensor
    logsumexp: torch.Tensor
    entropy: torch.Tensor
    argmax: torch.Tensor
    target_logit: torch.Tensor
    kl: torch.Tensor

    @property
    def nll(self) -> torch.Tensor:
        """-log p(label), [N]."""
        return self.logsumexp - self.target_logit


@dataclass(frozen=True)
class Normalisers:
    """What pass 2 needs to form dloss/dz without pass 1's tiles: the two log-sum-exps and the
    KL (the reverse KL's gradient subtracts it)."""

    logsumexp: torch.Tensor
    teacher_logsumexp: torch.Tensor
    kl: torch.Tensor


def finish(problem: Problem, sums: Partials) -> tuple[TokenStats, Normalisers]:
    """Closed forms of the full sums (module docstring's notation, p = softmax z, q = softmax u):

    lse = m + log z_sum,  H(p) = lse - z_dot / z_sum,  H(q) = lse_u - u_dot / u_sum,
    KL(q‖p) = lse - u_cross / u_sum - H(q),   KL(p‖q) = lse_u - z_cross / z_sum - H(p).
    Rounding can leave a KL of a few ulps below 0; it is clamped at 0.
    """
    lse = sums.z_max + torch.log(sums.z_sum)
    entropy = lse - sums.z_dot / sums.z_sum
    nan = torch.full_like(lse, float("nan"))
    target = sums.target if problem.labels is not None else nan
    if problem.has_teacher:
        layers = problem.layers
        lse_u = sums.u_max + torch.log(sums.u_sum)
        if problem.direction == "forward":
            teacher_entropy = (lse_u - sums.u_dot / sums.u_sum).repeat(layers)
            kl = lse - sums.u_cross / sums.u_sum.repeat(layers) - teacher_entropy
        else:
            kl = lse_u.repeat(layers) - sums.z_cross / sums.z_sum - entropy
        kl = kl.clamp_min(0.0)
        loss = kl
    else:
        lse_u, kl = lse.new_zeros(0), nan
        loss = lse - target
    stats = TokenStats(loss=loss, logsumexp=lse, entropy=entropy, argmax=sums.best, target_logit=target, kl=kl)
    return stats, Normalisers(lse, lse_u, kl)

