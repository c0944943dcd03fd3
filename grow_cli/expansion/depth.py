"""Depth growth: which (width-grown) source layer each target layer copies.

Both methods use the same copies: every source layer once, then whole repeats of the stack, then
the top `L' mod L` layers again (bert2BERT: 18 -> 22 layers adds copies of 14..17).

* `stack` (bert2BERT): the copies are stacked on top in that order: 0..17, 14..17. Not
  function-preserving (the copied layers add their update a second time).
* `identity`: each copy sits right above the layer it copies and has zero attention-output and
  MLP down projections, so it adds nothing to the residual stream: exactly function-preserving.
  Its norm gains and input projections are the copied layer's (not zero), so it trains at once.
"""

from __future__ import annotations

from dataclasses import dataclass

DEPTH_METHODS = ("stack", "identity")


@dataclass(frozen=True)
class DepthMap:
    """`source[l]` is the source layer target layer l copies; `zero_output[l]` marks identity layers."""

    method: str
    source: tuple[int, ...]
    zero_output: tuple[bool, ...]

    @property
    def layers(self) -> int:
        return len(self.source)


def _extra_copies(layers: int, target: int) -> list[int]:
    """The source layers copied once more, in stacking order."""
    if target < layers:
        raise ValueError(f"cannot shrink {layers} layers to {target}")
    repeats, leftover = divmod(target, layers)
    return list(range(layers)) * (repeats - 1) + list(range(layers - leftover, layers))


def depth_map(method: str, layers: int, target: int) -> DepthMap:
    if method not in DEPTH_METHODS:
        raise ValueError(f"unknown depth method {method!r}")
    extra = _extra_copies(layers, target)
    if method == "stack":
        source = list(range(layers)) + extra
        return DepthMap(method, tuple(source), (False,) * target)
    source, zero = [], []
    for layer in range(layers):
        source.append(layer)
        zero.append(False)
        copies = extra.count(layer)
        source += [layer] * copies
        zero += [True] * copies
    return DepthMap(method, tuple(source), tuple(zero))
