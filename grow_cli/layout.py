"""How a model is split over processes: tensor, pipeline and data parallel degrees.

One type for the layout a plan stage is planned for (the plan file's `layout:` mapping), the one
a run resolves to, and the one a process runs at; it imports nothing, so every layer can use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    dp: int = 1

    @property
    def world_size(self) -> int:
        """Processes (one GPU each on a cluster) the layout needs."""
        return self.tp * self.pp * self.dp

    def describe(self) -> str:
        return f"TP={self.tp} PP={self.pp} DP={self.dp}"

    def to_dict(self) -> dict[str, int]:
        return asdict(self)
