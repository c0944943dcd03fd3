"""Index maps: which source unit each target unit copies, and how many copies each source unit has.

A map `g: [0, n') -> [0, n)` keeps the old units in place (`g(i) = i` for i < n) and draws each
new unit's source uniformly at random. Maps are drawn on the CPU from a generator seeded by the
user's seed and the map's name only, so every rank of a multi-process expansion, and every rerun,
draws the same maps whatever the source checkpoint's parallel layout was.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property

import torch


def generator_for(seed: int, *names: object) -> torch.Generator:
    """A CPU generator seeded by `seed` and a stable hash of `names` (not Python's salted hash)."""
    tag = zlib.crc32("/".join(str(n) for n in names).encode())
    return torch.Generator(device="cpu").manual_seed((seed * 0x9E3779B1 + tag) % (2**63))


@dataclass(frozen=True)
class IndexMap:
    """`index[i]` is the source unit target unit `i` copies; `source` is the source size."""

    source: int
    index: tuple[int, ...]

    def __post_init__(self) -> None:
        if any(not 0 <= k < self.source for k in self.index):
            raise ValueError(f"index map refers outside [0, {self.source})")
        if set(self.index) != set(range(self.source)):
            raise ValueError("an index map must keep every source unit")

    @property
    def target(self) -> int:
        return len(self.index)

    @cached_property
    def tensor(self) -> torch.Tensor:
        return torch.tensor(self.index, dtype=torch.long)

    @cached_property
    def counts(self) -> torch.Tensor:
        """C[k]: how many target units copy source unit k."""
        return torch.bincount(self.tensor, minlength=self.source)

    @cached_property
    def target_counts(self) -> torch.Tensor:
        """C[g(i)] for every target unit i (float32, for scaling)."""
        return self.counts.index_select(0, self.tensor).to(torch.float32)

    @cached_property
    def new(self) -> torch.Tensor:
        """True for target units that are not the first copy of their source unit."""
        seen: set[int] = set()
        flags = []
        for k in self.index:
            flags.append(k in seen)
            seen.add(k)
        return torch.tensor(flags, dtype=torch.bool)

    def blocks(self, size: int) -> "IndexMap":
        """The same map on `size`-wide blocks (a head's `head_dim` rows): unit k -> rows k*size..."""
        return IndexMap(self.source * size, tuple(k * size + t for k in self.index for t in range(size)))


def grow_map(source: int, target: int, generator: torch.Generator) -> IndexMap:
    """Keep units 0..source-1, draw each new unit's source uniformly at random (bert2BERT)."""
    if target < source:
        raise ValueError(f"cannot shrink {source} units to {target}")
    extra = torch.randint(0, source, (target - source,), generator=generator).tolist()
    return IndexMap(source, tuple(range(source)) + tuple(extra))
