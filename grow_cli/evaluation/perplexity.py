"""Perplexity, mean token loss and bits per byte over a validation token stream.

Definitions (natural log throughout):
* loss = mean over predicted tokens of -log p(token | preceding tokens in its window)
* ppl = exp(loss)
* bits_per_byte = Σ NLL / (ln 2 · Σ bytes of the predicted tokens' text)

The softmax is over the tokenizer's vocabulary (megatron's padding rows are no tokens, see
forward.py): on the same windows this is megatron's training cross-entropy minus the padding
rows' share of the softmax, which training drives to nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy
import torch


@dataclass(frozen=True)
class PerplexityResult:
    loss: float
    ppl: float
    bits_per_byte: float
    tokens: int
    bytes: int

    def to_json(self) -> dict:
        return {
            "loss": self.loss,
            "ppl": self.ppl,
            "bits_per_byte": self.bits_per_byte,
            "tokens": self.tokens,
            "bytes": self.bytes,
        }


class PerplexityMeter:
    """Accumulates token NLLs (float64 sums) and the bytes they cover."""

    def __init__(self, byte_lengths: numpy.ndarray):
        self._byte_lengths = byte_lengths
        self.nll_sum = 0.0
        self.tokens = 0
        self.bytes = 0

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Score one batch: logits [b, s, V], targets [b, s]; returns the per-token NLL [b, s]."""
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1).to(logits.device), reduction="none"
        ).view_as(targets)
        self.nll_sum += float(nll.double().sum())
        self.tokens += targets.numel()
        self.bytes += int(self._byte_lengths[targets.reshape(-1).cpu().numpy()].sum())
        return nll

    def result(self) -> PerplexityResult:
        loss = self.nll_sum / max(self.tokens, 1)
        bits = self.nll_sum / (math.log(2) * self.bytes) if self.bytes else float("nan")
        return PerplexityResult(loss=loss, ppl=math.exp(loss), bits_per_byte=bits, tokens=self.tokens, bytes=self.bytes)
