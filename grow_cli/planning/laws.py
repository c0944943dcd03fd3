"""Chinchilla-style scaling laws: predicted loss and the compute-optimal split.

L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022, "Training Compute-Optimal Large Language
Models", approach 3). N counts all parameters, embeddings included, as Hoffmann et al. did.
The default preset is the refit of Besiroglu et al. 2024 ("Chinchilla Scaling: A replication
attempt"), which is consistent with the ~20 tokens/parameter rule; the rounded 2022 constants
imply 32-98 tokens/parameter. The losses are in nats/token on the fit's own data (MassiveText),
so on another corpus and tokenizer they rank sizes and budgets rather than predict absolutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from grow_cli.errors import GrowError


@dataclass(frozen=True)
class ScalingLaw:
    """One fitted parametric loss law."""

    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str
    # the smallest models and budgets of the fit: Hoffmann et al. trained 70M-16B parameters on
    # 5B-500B tokens (the refit reuses their runs). Extrapolating up is what the law is used for;
    # below the fit the A/N^α term blows up (2M params, V=1000, 40M tokens: 8.13 nats > ln V).
    min_params: float = 7e7
    min_tokens: float = 5e9

    def loss(self, params: float, tokens: float) -> float:
        """Predicted final training loss of `params` parameters trained on `tokens` tokens."""
        return self.E + self.A / params**self.alpha + self.B / tokens**self.beta

    def predicts(self, params: float, tokens: float, vocab: int) -> bool:
        """Whether the law's loss for this run means anything: inside the fit's lower bounds and
        below ln(vocab), the loss of a uniform guess, which no trained model exceeds."""
        return params >= self.min_params and tokens >= self.min_tokens and self.loss(params, tokens) < math.log(vocab)

    def compute_optimal(self, compute: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising the loss at `compute` = 6·N·D FLOPs (closed form).

        G = (αA/(βB))^(1/(α+β)), N_opt = G·(C/6)^(β/(α+β)), D_opt = (C/6)^(α/(α+β))/G.
        """
        a, b = self.alpha, self.beta
        g = (a * self.A / (b * self.B)) ** (1 / (a + b))
        n = g * (compute / 6) ** (b / (a + b))
        return n, compute / 6 / n

    def overtraining(self, size_ratio: float) -> tuple[float, float]:
        """A model `size_ratio` × N_opt reaching the compute-optimal loss: (k_D, extra compute).

        k_D = [1 − (β/α)(k_N^−α − 1)]^(−1/β) multiplies D_opt; the extra compute is k_N·k_D − 1.
        Infinite when the model is too small to ever reach that loss.
        """
        inner = 1 - (self.beta / self.alpha) * (size_ratio**-self.alpha - 1)
        if inner <= 0:
            return math.inf, math.inf
        k_d = inner ** (-1 / self.beta)
        return k_d, size_ratio * k_d - 1


LAWS: dict[str, ScalingLaw] = {
    "besiroglu2024": ScalingLaw(
        "besiroglu2024", 1.8172, 482.01, 2085.43, 0.3478, 0.3658, "Besiroglu et al. 2024 refit of Chinchilla"
    ),
    "hoffmann2022": ScalingLaw("hoffmann2022", 1.69, 406.4, 410.7, 0.34, 0.28, "Hoffmann et al. 2022 (Chinchilla)"),
}


def get_law(name: str) -> ScalingLaw:
    law = LAWS.get(name.lower())
    if law is None:
        raise GrowError(f"unknown scaling law {name!r}; choose one of {', '.join(LAWS)}")
    return law
