"""Which attention a series uses: `--kv-groups auto | mha | N`.

`auto` gives 8 KV groups to a series whose largest model is at least 7B and multi-head attention
below: Llama 2 used grouped-query attention (GQA, Ainslie et al. 2023) with 8 groups for its 34B
and 70B and MHA for 7B/13B; Mistral 7B and Llama 3 8B/70B use 8 KV heads. At that size the KV
cache, not the weights, bounds serving batch and context; Ainslie et al. find 8 groups close to
MHA's quality, and 8 groups divide over TP 8, one node.

The choice is per series, not per stage, because of the growth rule (`grow_cli.growth_rules`):
an MHA stage of H heads grows exactly into G' groups only if G' >= H, so a series that must end
at 8 groups has every stage at 8 groups (those with 8 heads or fewer keep one group per head).
The reference series (only 1B/2B/4B/8B, published as MHA) stays MHA under `auto`; in another
series a preset gets 8 groups where its heads split into 8 (1B, 8B), and a stage that cannot
(the 2B's 20 heads, without `--auto-shapes`) or cannot grow from its MHA predecessor at 8 groups
stays MHA. `N` puts N groups in every stage with more than N heads (an error where that cannot
be done); `mha` is one group per head everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grow_cli.errors import GrowError
from grow_cli.shape import is_reference_series
from grow_cli.units import parse_count

GQA_GROUPS = 8
GQA_FROM = 7e9  # nominal size of the series' largest model from which `auto` uses GQA


@dataclass(frozen=True)
class KVGroupsRule:
    kind: str  # "auto" | "mha" | "fixed"
    groups: int = 0  # the fixed count

    @classmethod
    def parse(cls, spec: str) -> "KVGroupsRule":
        text = spec.strip().lower()
        if text in ("auto", "mha"):
            return cls(text)
        if text.isdigit() and int(text) > 0:
            return cls("fixed", int(text))
        raise GrowError(f"cannot read --kv-groups {spec!r}: use auto, mha or a positive group count such as 8")

    def series_groups(self, names: Sequence[str]) -> int | None:
        """KV groups of every stage with more heads than that (None: multi-head attention)."""
        if self.kind == "fixed":
            return self.groups
        if self.kind == "auto" and parse_count(names[-1]) >= GQA_FROM and not is_reference_series(names):
            return GQA_GROUPS
        return None

    @property
    def falls_back(self) -> bool:
        """`auto` keeps MHA where a stage cannot grow into its groups; an explicit N is an error there."""
        return self.kind == "auto"
