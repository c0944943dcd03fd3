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
from functools import cached_property

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

    def between(self, start: int, stop: int) -> "Axis":
        """Target positions start..stop-1 of this axis (a row block of a piece)."""
        return Axis(
            self.index[start:stop],
            None if self.scale is None else self.scale[start:stop],
            None if self.new is None else self.new[start:stop],
            self.groups,
        )

    @cached_property
    def prefix(self) -> int:
        """Length of the leading run with index[i] == i (old units in place)."""
        moved = (self.index != torch.arange(self.size)).nonzero()
        return int(moved[0]) if moved.numel() else self.size

    @cached_property
    def scaled(self) -> torch.Tensor | None:
        """Positions whose scale is not 1 (None: none)."""
        if self.scale is None:
            return None
        positions = (self.scale != 1).nonzero().squeeze(1)
        return positions if positions.numel() else None


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


def _gather_rows(w: torch.Tensor, rows: Axis | None, start: int, stop: int, upper: torch.Tensor | None) -> torch.Tensor:
    """Rows `start:stop` of the target, before column growth: a view of `w` when they are a
    contiguous run of source rows (old units in place), else a gather; AKI's new rows from `upper`."""
    if rows is None:
        return w[start:stop]
    index = rows.index[start:stop]
    first = int(index[0])
    contiguous = bool((index == torch.arange(first, first + index.numel())).all())
    part = w[first : first + index.numel()] if contiguous else w.index_select(0, index)
    if upper is not None and rows.new is not None:
        fresh = rows.new[start:stop].nonzero().squeeze(1)
        if fresh.numel():
            part = part.clone() if contiguous else part
            part[fresh] = upper.index_select(0, index.index_select(0, fresh))
    return part


def _gather_cols(part: torch.Tensor, cols: Axis | None, out: torch.Tensor) -> None:
    """`out[:] = part[:, cols.index]`, copying the in-place prefix instead of gathering it."""
    if cols is None:
        out.copy_(part)
        return
    p = cols.prefix
    out[:, :p].copy_(part[:, :p])
    if p < cols.size:
        out[:, p:].copy_(part.index_select(1, cols.index[p:]))


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
    column unit (`cols.groups`); it needs a seeded `generator`.

    Works on row blocks so temporaries stay small. Old units sit in place, so most of a block is
    a plain copy; only positions whose scale is not 1 go through fp32 (fp64 stays fp64), each
    element rounded back once: `(w * row_scale) * col_scale`.
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
    row_scale = rows.scale if rows is not None and rows.scaled is not None else None
    col_scale = cols.scale.to(compute) if cols is not None and cols.scale is not None else None
    scaled_cols = cols.scaled if cols is not None else None
    out = torch.empty(n_rows, n_cols, dtype=w.dtype)
    block = max(1, _BLOCK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, block):
        stop = min(n_rows, start + block)
        part = _gather_rows(w, rows, start, stop, upper)
        target = out[start:stop]
        _gather_cols(part, cols, target)
        if std:  # dense: every element changes
            values = target.to(compute)
            if row_scale is not None:
                values *= row_scale[start:stop].to(compute).unsqueeze(1)
            if col_scale is not None:
                values *= col_scale
            values += _zero_sum_noise(stop - start, cols, std, generator).to(compute)
            target.copy_(values)
            continue
        if scaled_cols is not None:
            values = target.index_select(1, scaled_cols).to(compute) * col_scale.index_select(0, scaled_cols)
            target.index_copy_(1, scaled_cols, values.to(w.dtype))
        if row_scale is not None:
            local = rows.scaled[(rows.scaled >= start) & (rows.scaled < stop)] - start
            if local.numel():
                values = torch.empty(local.numel(), n_cols, dtype=w.dtype)
                _gather_cols(part.index_select(0, local), cols, values)
                values = values.to(compute) * row_scale[start:stop].index_select(0, local).to(compute).unsqueeze(1)
                if col_scale is not None:
                    values *= col_scale
                target.index_copy_(0, local, values.to(w.dtype))
    return out
