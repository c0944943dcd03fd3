"""Scaling-law presets: closed forms against numerical optimisation, and the published facts."""

from __future__ import annotations

import math

import pytest

from grow_cli.errors import GrowError
from grow_cli.planning.laws import LAWS, get_law


def _argmin_on_budget(law, compute: float) -> float:
    """N minimising L(N, C/6N), by golden-section search in log N (independent of the closed form)."""
    lo, hi = math.log(1e3), math.log(1e15)
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_n: float) -> float:
        n = math.exp(log_n)
        return law.loss(n, compute / (6 * n))

    for _ in range(200):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if loss(a) < loss(b):
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2)


@pytest.mark.parametrize("name", sorted(LAWS))
@pytest.mark.parametrize("compute", [1e19, 1e22, 1e25])
def test_compute_optimal_closed_form_minimises_the_loss(name, compute):
    law = LAWS[name]
    n_opt, d_opt = law.compute_optimal(compute)
    assert 6 * n_opt * d_opt == pytest.approx(compute, rel=1e-12)
    assert n_opt == pytest.approx(_argmin_on_budget(law, compute), rel=1e-6)


def test_refit_reproduces_twenty_tokens_per_parameter_and_2022_fit_does_not():
    refit, original = LAWS["besiroglu2024"], LAWS["hoffmann2022"]
    for compute in (1e20, 1e22, 1e24):
        n, d = refit.compute_optimal(compute)
        assert 15 < d / n < 25
        n, d = original.compute_optimal(compute)
        assert d / n > 32


def test_overtraining_overhead():
    law = LAWS["besiroglu2024"]
    n_opt, d_opt = law.compute_optimal(1e23)
    target = law.loss(n_opt, d_opt)
    for size_ratio in (0.5, 0.8, 1.5):
        k_d, extra = law.overtraining(size_ratio)
        # the smaller/larger model with k_D times the data reaches the optimum's loss
        assert law.loss(size_ratio * n_opt, k_d * d_opt) == pytest.approx(target, rel=1e-9)
        assert extra == pytest.approx(size_ratio * k_d - 1)
    assert law.overtraining(0.5)[1] == pytest.approx(0.26, abs=0.005)  # planning notes: +26%
    assert law.overtraining(0.01) == (math.inf, math.inf)


def test_published_constants_and_lookup():
    assert (LAWS["hoffmann2022"].E, LAWS["hoffmann2022"].A, LAWS["hoffmann2022"].B) == (1.69, 406.4, 410.7)
    assert (LAWS["besiroglu2024"].alpha, LAWS["besiroglu2024"].beta) == (0.3478, 0.3658)
    assert get_law("Hoffmann2022") is LAWS["hoffmann2022"]
    with pytest.raises(GrowError, match="choose one of besiroglu2024, hoffmann2022"):
        get_law("kaplan2020")
