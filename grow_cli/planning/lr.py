"""Per-stage learning rates: the growth ladder and the schedule around each peak.

The reference method trains small stages hot and cools down as the model grows (spec §1: 1B
1.5e-3, 2B 1.1e-3, 4B 7e-4, 8B 3e-4; 1.5e-3 makes an 8B diverge). Other sizes interpolate that
ladder linearly in log(LR) against log(size), clamped at its ends. A fixed rate for every stage
(the "one LR" ablation) and a log-linear range between two rates are the alternatives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from grow_cli.errors import GrowError

REFERENCE_LADDER: tuple[tuple[float, float], ...] = ((1e9, 1.5e-3), (2e9, 1.1e-3), (4e9, 7.0e-4), (8e9, 3.0e-4))


def interpolate_loglog(points: Sequence[tuple[float, float]], x: float) -> float:
    """Piecewise-linear interpolation of log(y) in log(x) through sorted points, clamped."""
    if x <= points[0][0]:
        return points[0][1]
    if x >= points[-1][0]:
        return points[-1][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x in (x0, x1):
            return y0 if x == x0 else y1
        if x0 < x < x1:
            t = math.log(x / x0) / math.log(x1 / x0)
            return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))
    raise ValueError("interpolation points must be sorted by x")


def _rate(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise GrowError(
            f"cannot read --lr-ladder {spec!r}: use 'reference', one rate such as 3e-4, "
            "or FIRST:LAST such as 1.5e-3:3e-4"
        ) from None
    if not 0 < value < 1:
        raise GrowError(f"learning rate {text} in --lr-ladder {spec!r} must be between 0 and 1")
    return value


@dataclass(frozen=True)
class LRLadder:
    """The rule that picks each stage's peak LR: `reference`, one fixed rate, or a range."""

    kind: str  # "reference" | "fixed" | "range"
    first: float = 0.0  # the fixed rate, or the first stage's rate of a range
    last: float = 0.0  # the last stage's rate of a range

    @classmethod
    def parse(cls, spec: str) -> "LRLadder":
        text = spec.strip().lower()
        if text == "reference":
            return cls("reference")
        if ":" in text:
            first, _, last = text.partition(":")
            return cls("range", _rate(first, spec), _rate(last, spec))
        rate = _rate(text, spec)
        return cls("fixed", rate, rate)

    def rates(self, sizes: Sequence[float]) -> list[float]:
        """Peak LR of each stage, given the stages' nominal sizes (smallest first)."""
        if self.kind == "reference":
            return [interpolate_loglog(REFERENCE_LADDER, n) for n in sizes]
        if self.kind == "fixed" or len(sizes) == 1:
            return [self.first] * len(sizes)
        span = math.log(sizes[-1] / sizes[0])
        return [
            math.exp(math.log(self.first) + math.log(n / sizes[0]) / span * (math.log(self.last) - math.log(self.first)))
            for n in sizes
        ]

    def describe(self) -> str:
        if self.kind == "reference":
            return "reference ladder (1B 1.5e-3, 2B 1.1e-3, 4B 7e-4, 8B 3e-4; log-log in size)"
        if self.kind == "fixed":
            return f"fixed {self.first:g}"
        return f"log-linear in size from {self.first:g} to {self.last:g}"


@dataclass(frozen=True)
class ScheduleRule:
    """Cosine-decay schedule around each stage's peak: floor and warmup.

    Every stage warms up again: it starts from a freshly expanded model (public growth recipes
    reset or partly reset Adam's state) at a new peak LR.
    """

    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.01
    warmup_min: int = 100

    def __post_init__(self) -> None:
        if not 0 <= self.min_lr_ratio <= 1:
            raise GrowError(f"--min-lr-ratio {self.min_lr_ratio} must be between 0 and 1")
        if not 0 <= self.warmup_fraction < 1:
            raise GrowError(f"--warmup-fraction {self.warmup_fraction} must be in [0, 1)")
        if self.warmup_min < 0:
            raise GrowError(f"--warmup-min {self.warmup_min} must not be negative")

    def warmup_iters(self, train_iters: int) -> int:
        """max(warmup_min, fraction × iterations), but never more than half the stage."""
        return min(max(self.warmup_min, math.ceil(self.warmup_fraction * train_iters)), train_iters // 2)
