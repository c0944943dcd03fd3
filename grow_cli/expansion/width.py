"""Width growth operators on plain tensors: FPI, AKI and isometric duplication.

Every weight grows by gathering rows and/or columns through index maps and scaling them:
`W'[i, j] = W[g_r(i), g_c(j)] * s_r(i) * s_c(j)`. What differs between methods is the scales on
the residual stream (hidden size h -> h', one global map g with copy counts C):

| role                                   | fpi / aki            | iso                          |
|----------------------------------------|----------------------|------------------------------|
| writers (embedding columns, o/down rows)| copy                 | / sqrt(C)                    |
| readers (qkv/fc1/LM-head columns)      | / C                  | / sqrt(C)                    |
| RMSNorm gain                           | copy                 | * sqrt(h/h'), eps * h/h'     |

Inner dimensions (FFN units, heads) that no norm sees use plain copy-and-divide in every method:
their writers (fc1 rows, q/k/v rows) copy, their readers (fc2 / o columns) divide by C.
AKI is FPI except that, in every layer but the top one, the rows of *new* output units come from
the layer above (gathered and divided the same way).

Symmetry breaking that keeps the function: copies of a unit read the same input, so adding
zero-sum noise across the copies' reader columns leaves every output unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grow_cli.expansion.maps import IndexMap

WIDTH_METHODS = ("aki", "fpi", "iso")
# Rows per compute block: scaling happens in fp32 on blocks of about this many elements.
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Axis:
    """How one tensor axis grows: gather `index`, multiply by `scale` (None: 1).

    `new` marks the target positions that are new units (AKI takes those rows from the layer
    above); `groups` is the map whose copies share an input (zero-sum noise is drawn per group).
    """

    index: torch.Tensor
    scale: torch.Tensor | None = None
    new: torch.Tensor | None = None
    groups: IndexMap | None = None

    @property
    def size(self) -> int:
        return int(self.index.numel())


def copy_axis(m: IndexMap) -> Axis:
    """Writers of an inner dimension: plain copies."""
    return Axis(m.tensor, None, m.new, m)


def divide_axis(m: IndexMap) -> Axis:
    """Readers of an inner dimension: copies divided by their count, so the sum is unchanged."""
    return Axis(m.tensor, _none_if_ones(1.0 / m.target_counts), m.new, m)


def _none_if_ones(scale: torch.Tensor) -> torch.Tensor | None:
    return None if bool((scale == 1).all()) else scale


@dataclass(frozen=True)
class ResidualRule:
    """The residual-stream axes for one width method and the global hidden map."""

    method: str
    hidden: IndexMap

    def writer(self) -> Axis:
        if self.method == "iso":
            return Axis(self.hidden.tensor, _none_if_ones(self.hidden.target_counts.rsqrt()), self.hidden.new)
        return Axis(self.hidden.tensor, None, self.hidden.new)

    def reader(self) -> Axis:
        if self.method == "iso":
            scale = self.hidden.target_counts.rsqrt()
        else:
            scale = 1.0 / self.hidden.target_counts
        return Axis(self.hidden.tensor, _none_if_ones(scale), self.hidden.new, self.hidden)

    def norm(self, divide: bool = False) -> Axis:
        """RMSNorm gains; `divide` folds the LM head's 1/C into the final norm (tied fpi/aki)."""
        if self.method == "iso":
            factor = math.sqrt(self.hidden.source / self.hidden.target)
            scale = torch.full((self.hidden.target,), factor, dtype=torch.float32)
        elif divide:
            scale = 1.0 / self.hidden.target_counts
        else:
            scale = torch.ones(self.hidden.target)
        return Axis(self.hidden.tensor, _none_if_ones(scale))

    def norm_eps(self, eps: float) -> float:
        """The target RMSNorm epsilon: iso scales it by h/h' so the norm of a copy is exact."""
        if self.method == "iso":
            return eps * self.hidden.source / self.hidden.target
        return eps


def _rms(w: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(w, dtype=torch.float64)) / math.sqrt(max(1, w.numel()))


def _zero_sum_noise(rows: int, axis: Axis, std: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise whose sum over each unit's copies is zero (row by row)."""
    groups = axis.groups
    noise = torch.randn(rows, axis.size, generator=generator) * std
    sums = torch.zeros(rows, groups.source).index_add_(1, groups.tensor, noise)
    mean = sums / groups.counts.to(torch.float32)
    return noise - mean.index_select(1, groups.tensor)


def grow_tensor(
    w: torch.Tensor,
    rows: Axis | None = None,
    cols: Axis | None = None,
    *,
    upper: torch.Tensor | None = None,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Grow a vector (`rows` only) or a matrix; the result keeps `w`'s dtype.

    `upper` (AKI) is the same tensor of the layer above: rows marked new in `rows.new` are taken
    from it. `noise` (relative to the RMS of `w`) adds zero-sum noise across the copies of each
    column unit (`cols.groups`); it needs a seeded `generator`. Scaling runs in fp32 (fp64 stays
    fp64) on row blocks, so bf16 weights are rounded once and temporaries stay small.
    """
    compute = torch.promote_types(w.dtype, torch.float32)
    if w.dim() == 1:
        out = w.index_select(0, rows.index)
        if rows.scale is not None:
            out = (out.to(compute) * rows.scale.to(compute)).to(w.dtype)
        return out
    n_rows = rows.size if rows is not None else w.shape[0]
    n_cols = cols.size if cols is not None else w.shape[1]
    std = noise * _rms(w) if noise else 0.0
    if std and (cols is None or cols.groups is None or generator is None):
        raise ValueError("noise needs a column axis with copy groups and a generator")
    take_upper = upper is not None and rows is not None and rows.new is not None
    out = torch.empty(n_rows, n_cols, dtype=w.dtype)
    block = max(1, _BLOCK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, block):
        stop = min(n_rows, start + block)
        if rows is None:
            part = w[start:stop]
        else:
            index = rows.index[start:stop]
            part = w.index_select(0, index)
            if take_upper:
                fresh = rows.new[start:stop].nonzero().squeeze(1)
                if fresh.numel():
                    part[fresh] = upper.index_select(0, index.index_select(0, fresh))
        if cols is not None:
            part = part.index_select(1, cols.index)
        row_scale = rows.scale[start:stop] if rows is not None and rows.scale is not None else None
        col_scale = cols.scale if cols is not None else None
        if row_scale is not None or col_scale is not None or std:
            part = part.to(compute)
            if row_scale is not None:
                part *= row_scale.to(compute).unsqueeze(1)
            if col_scale is not None:
                part *= col_scale.to(compute)
            if std:
                part += _zero_sum_noise(stop - start, cols, std, generator).to(compute)
            part = part.to(w.dtype)
        out[start:stop] = part
    return out
