"""Each stage's global batch and peak LR when the user does not pin them.

The reference series (sizes 1B, 2B, 4B, 8B only) keeps its published recipe: 512 sequences per
step and the reference LR ladder. Any other series takes both from the compute-based scaling
laws of DeepSeek LLM (Bi et al. 2024, "DeepSeek LLM: Scaling Open-Source Language Models with
Longtermism", §3.1, fitted on 1e17–2e19 FLOPs and validated on their 7B and 67B):

    B_opt = 0.2920 · C^0.3271 tokens,        η_opt = 0.3118 · C^(−0.1250),

with C = M·D, M the non-embedding FLOPs per token (`grow_cli.flops.nonembedding_flops_per_token`)
and D the stage's scratch tokens. The scratch compute, not the stage's own increment, because
the budget rule makes the series up to a stage cost that stage's scratch compute: a grown stage
has been trained with it and sits at the loss it reaches (the laws' batch grows and the LR falls
as the loss falls). `--global-batch` and `--lr-ladder` still win, each on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from grow_cli.planning.lr import LRLadder
from grow_cli.shape import is_reference_series

REFERENCE_GLOBAL_BATCH = 512  # sequences: the reference series' published 512 x 1024 tokens
DEEPSEEK_BATCH = (0.2920, 0.3271)  # B_opt = a · C^b tokens
DEEPSEEK_LR = (0.3118, -0.1250)  # η_opt = a · C^b
# A plan is often made before the GPU count is fixed: a multiple of 64 sequences still divides
# over any power-of-two DP up to 64 at micro batch 1 (rounded to lcm(64, micro x DP) otherwise).
BATCH_MULTIPLE = 64


def deepseek_batch_tokens(compute: float) -> float:
    """DeepSeek LLM's compute-optimal batch size in tokens for C = M·D FLOPs."""
    a, b = DEEPSEEK_BATCH
    return a * compute**b


def deepseek_lr(compute: float) -> float:
    """DeepSeek LLM's compute-optimal peak learning rate for C = M·D FLOPs."""
    a, b = DEEPSEEK_LR
    return a * compute**b


def batch_sequences(tokens: float, seq_len: int, unit: int) -> int:
    """`tokens` per step as sequences: the nearest multiple of `unit`, at least one `unit`."""
    return max(1, round(tokens / seq_len / unit)) * unit


@dataclass(frozen=True)
class StageHyperparams:
    """What one stage trains with: sequences per optimizer step and the peak LR."""

    global_batch: int
    lr: float


@dataclass(frozen=True)
class HyperparamRule:
    """Where a plan's batches and LRs come from: pinned values, the reference recipe, or DeepSeek."""

    global_batch: int | None  # pinned by --global-batch; None: the rule below
    lr_ladder: str | None  # pinned by --lr-ladder; None: the rule below
    reference: bool  # the reference series: 512 sequences and the reference ladder

    @classmethod
    def of(cls, sizes: Sequence[str], global_batch: int | None, lr_ladder: str | None) -> "HyperparamRule":
        return cls(global_batch, lr_ladder, is_reference_series(sizes))

    @property
    def ladder(self) -> LRLadder | None:
        """The LR ladder stages use; None when the LR comes from DeepSeek's law."""
        if self.lr_ladder is not None:
            return LRLadder.parse(self.lr_ladder)
        return LRLadder.parse("reference") if self.reference else None

    def stages(
        self, nominals: Sequence[float], computes: Sequence[float], seq_len: int, micro_batch: int, dp: int
    ) -> list[StageHyperparams]:
        """Batch and peak LR (four significant digits) per stage; `computes` are the C = M·D."""
        ladder = self.ladder
        rates = ladder.rates(list(nominals)) if ladder else [deepseek_lr(c) for c in computes]
        unit = batch_unit(micro_batch, dp)
        return [StageHyperparams(self._batch(c, seq_len, unit), float(f"{r:.4g}")) for c, r in zip(computes, rates)]

    def _batch(self, compute: float, seq_len: int, unit: int) -> int:
        if self.global_batch is not None:
            return self.global_batch
        if self.reference:
            return REFERENCE_GLOBAL_BATCH
        return batch_sequences(deepseek_batch_tokens(compute), seq_len, unit)

    def describe(self, micro_batch: int, dp: int) -> str:
        """One line for the report: where the batches and the LRs come from."""
        ladder = self.ladder
        lr = ladder.describe() if ladder else "η = 0.3118·C^-0.125"
        if self.global_batch is not None:
            batch = f"--global-batch {self.global_batch} sequences"
        elif self.reference:
            batch = f"the reference {REFERENCE_GLOBAL_BATCH} sequences"
        else:
            batch = f"B = 0.2920·C^0.3271 tokens in whole multiples of {batch_unit(micro_batch, dp)} sequences"
        line = f"Learning rates: {lr}; batches: {batch}"
        if ladder is None or (self.global_batch is None and not self.reference):
            line += " (DeepSeek LLM 2024 §3.1; C = M·D, a stage's scratch compute without the vocabulary)"
        return line


def batch_unit(micro_batch: int, dp: int) -> int:
    """What an automatic global batch is a multiple of: 64 sequences and micro batch x DP."""
    return math.lcm(BATCH_MULTIPLE, micro_batch * dp)
