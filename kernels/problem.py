"""What one call of the fused op computes on: the inputs, checked once, and their tiling.

Both backends (the PyTorch reference and the Triton kernels) read the same `Problem`, so shape
rules, the student-row -> teacher-row map and the vocabulary offset of this rank's shard have one
definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Direction = Literal["forward", "reverse"]


@dataclass(frozen=True)
class Problem:
    """Student rows n = k·T + t (layer k, token t) against vocabulary rows of one shard.

    hidden [N, h] and head [V, h] give the student logits z = hidden @ head.T. The target is
    `labels` [N] (global token ids), a teacher as `teacher_hidden` [T, h_t] with `teacher_head`
    [V, h_t], or `teacher_logits` [T, V]; student row n reads teacher row n mod T. With a teacher
    the loss is the KL divergence in `direction`; otherwise cross-entropy on `labels`. Labels may
    accompany a teacher, then they only feed the statistics (target logit, argmax accuracy).
    `vocab_offset` is the global id of this shard's first row.
    """

    hidden: torch.Tensor
    head: torch.Tensor
    labels: torch.Tensor | None
    teacher_hidden: torch.Tensor | None
    teacher_head: torch.Tensor | None
    teacher_logits: torch.Tensor | None
    direction: Direction
    vocab_offset: int

    @property
    def has_teacher(self) -> bool:
        return self.teacher_hidden is not None or self.teacher_logits is not None

    @property
    def rows(self) -> int:
        """N, student rows."""
        return self.hidden.size(0)

    @property
    def tokens(self) -> int:
        """T, teacher rows (N without a teacher: then every row is its own token)."""
        if self.teacher_logits is not None:
            return self.teacher_logits.size(0)
        return self.teacher_hidden.size(0) if self.teacher_hidden is not None else self.rows

    @property
    def layers(self) -> int:
        """K = N / T, the student layers sharing each teacher row."""
        return self.rows // self.tokens

    @property
    def vocab(self) -> int:
        """This shard's vocabulary rows."""
        return self.head.size(0)


def make_problem(
    hidden: torch.Tensor,
    head: torch.Tensor,
    labels: torch.Tensor | None,
    teacher_hidden: torch.Tensor | None,
    teacher_head: torch.Tensor | None,
    teacher_logits: torch.Tensor | None,
    direction: Direction,
    vocab_offset: int,
) -> Problem:
    """Validate shapes (ValueError: these are programming errors, not user input) and build."""
    if hidden.dim() != 2 or head.dim() != 2 or hidden.size(1) != head.size(1):
        raise ValueError(f"need hidden [N, h] and head [V, h], got {tuple(hidden.shape)} and {tuple(head.shape)}")
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    if (teacher_hidden is None) != (teacher_head is None):
        raise ValueError("teacher_hidden and teacher_head come together")
    if teacher_hidden is not None and teacher_logits is not None:
        raise ValueError("give the teacher as hidden states and head, or as logits, not both")
    if labels is None and teacher_hidden is None and teacher_logits is None:
        raise ValueError("need a target: labels, a teacher (hidden + head) or teacher logits")
    if labels is not None and labels.shape != (hidden.size(0),):
        raise ValueError(f"labels must be [{hidden.size(0)}], got {tuple(labels.shape)}")
    if teacher_hidden is not None and (
        teacher_hidden.dim() != 2 or teacher_head.dim() != 2 or teacher_head.size(0) != head.size(0)
        or teacher_hidden.size(1) != teacher_head.size(1)
    ):
        raise ValueError(
            f"need teacher_hidden [T, h_t] and teacher_head [{head.size(0)}, h_t], got "
            f"{tuple(teacher_hidden.shape)} and {tuple(teacher_head.shape)}"
        )
    if teacher_logits is not None and (teacher_logits.dim() != 2 or teacher_logits.size(1) != head.size(0)):
        raise ValueError(f"teacher_logits must be [T, {head.size(0)}], got {tuple(teacher_logits.shape)}")
    problem = Problem(
        hidden.contiguous(),
        head.to(hidden.dtype).contiguous(),
        None if labels is None else labels.long().contiguous(),
        None if teacher_hidden is None else teacher_hidden.contiguous(),
        None if teacher_head is None else teacher_head.to(teacher_hidden.dtype).contiguous(),
        None if teacher_logits is None else teacher_logits.contiguous(),
        direction,
        vocab_offset,
    )
    if problem.rows % problem.tokens:
        raise ValueError(f"student rows ({problem.rows}) must be a multiple of teacher rows ({problem.tokens})")
    return problem
