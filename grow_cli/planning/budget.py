"""The progressive-growth budget rule (spec §1) and where a capped corpus repeats.

Stage i alone, from scratch, would train on D_i tokens at f_i FLOPs per token: F_i = f_i·D_i.
Growth trains stage 1 on D_1, then each later stage on the tokens its scratch budget has left
after everything spent before it:

    ΔD_{i+1} = (F_{i+1} − Σ_{j≤i} f_j·ΔD_j) / f_{i+1}

so the series up to stage i+1 costs exactly F_{i+1}: the whole series costs what the largest
model alone would. The rule is written with per-stage FLOPs per token so it holds under any
FLOP convention (with f = 6·N it is the spec's formula).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grow_cli.errors import GrowError
from grow_cli.units import format_count


@dataclass(frozen=True)
class StageBudget:
    """Tokens and FLOPs of one stage; `*_cumulative` include every stage up to this one."""

    flops_per_token: float
    tokens_scratch: float
    tokens_incremental: float
    tokens_cumulative: float
    flops_scratch: float
    flops_incremental: float
    flops_cumulative: float


def progressive_budgets(
    names: Sequence[str], flops_per_token: Sequence[float], tokens_scratch: Sequence[float]
) -> list[StageBudget]:
    """Apply the budget rule to a series (smallest first); refuse a stage left with no budget."""
    if not (len(names) == len(flops_per_token) == len(tokens_scratch)) or not names:
        raise ValueError("progressive_budgets needs one name, FLOPs/token and token budget per stage")
    budgets: list[StageBudget] = []
    spent = 0.0
    consumed = 0.0
    for name, per_token, scratch in zip(names, flops_per_token, tokens_scratch):
        flops_scratch = per_token * scratch
        remaining = flops_scratch - spent
        if remaining <= 0:
            raise GrowError(
                f"stage {name}'s scratch budget ({flops_scratch:.3g} FLOPs) is not more than the "
                f"{spent:.3g} FLOPs the smaller stages already spent, so it would train on no new tokens; "
                "space the sizes further apart"
            )
        incremental = remaining / per_token
        spent += remaining
        consumed += incremental
        budgets.append(
            StageBudget(
                flops_per_token=per_token,
                tokens_scratch=scratch,
                tokens_incremental=incremental,
                tokens_cumulative=consumed,
                flops_scratch=flops_scratch,
                flops_incremental=remaining,
                flops_cumulative=spent,
            )
        )
    return budgets


@dataclass(frozen=True)
class DataUse:
    """How a stage's tokens split between corpus it has not seen and corpus read again."""

    unique: float
    repeated: float


def fixed_corpus_use(tokens_incremental: Sequence[float], corpus_tokens: float) -> list[DataUse]:
    """Read a corpus of `corpus_tokens` front to back across the stages ("w/ Fixed Data").

    Each stage continues where the previous one stopped; once the corpus is exhausted the rest
    of the series re-reads it, so `repeated` counts tokens seen before by an earlier stage.
    """
    if corpus_tokens <= 0:
        raise GrowError(f"a fixed corpus needs a positive size, got {format_count(corpus_tokens)} tokens")
    uses = []
    left = corpus_tokens
    for tokens in tokens_incremental:
        unique = min(left, tokens)
        left -= unique
        uses.append(DataUse(unique=unique, repeated=tokens - unique))
    return uses
