"""Growing attention heads with grouped-query attention, exactly.

Every target query head copies a source head s, and the KV group it sits in must copy s's source
KV group (K/V weights copied, never divided), otherwise the copied head attends with the wrong
keys. A source group holds r = H/G heads and a target group r' = H'/G' slots, all filled from one
source group, so each source group needs ceil(r/r') target groups: exact growth is possible iff

    G * ceil(r / r') <= G'.

Multi-head attention (r = r' = 1) always satisfies it; 25 heads / 5 groups -> 32 / 8 does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grow_cli.errors import GrowError
from grow_cli.expansion.maps import IndexMap
from grow_cli.shape import ModelShape


def groups_needed(source: ModelShape, heads: int, kv_groups: int) -> int:
    """Target KV groups an exact growth into `heads`/`kv_groups` needs."""
    per_source = source.heads // source.kv_groups
    per_target = heads // kv_groups
    return source.kv_groups * math.ceil(per_source / per_target)


def is_feasible(source: ModelShape, target: ModelShape) -> bool:
    return groups_needed(source, target.heads, target.kv_groups) <= target.kv_groups


def feasible_kv_groups(source: ModelShape, heads: int) -> list[int]:
    """Every KV group count that divides `heads` and admits exact growth, smallest first."""
    return [
        g
        for g in range(1, heads + 1)
        if heads % g == 0 and g >= source.kv_groups and groups_needed(source, heads, g) <= g
    ]


def check_gqa(source: ModelShape, target: ModelShape) -> None:
    """GrowError with the reason and a feasible alternative when the heads cannot grow exactly."""
    if is_feasible(source, target):
        return
    needed = groups_needed(source, target.heads, target.kv_groups)
    options = feasible_kv_groups(source, target.heads)
    alternative = min(options, key=lambda g: (abs(g - target.kv_groups), g))
    per_source = source.heads // source.kv_groups
    suggestion = f"use --kv-groups {alternative} ({target.heads} heads)"
    # or keep the requested groups with more heads per group
    per_target = target.heads // target.kv_groups
    more = [
        n * target.kv_groups
        for n in range(per_target + 1, per_source + 1)
        if groups_needed(source, n * target.kv_groups, target.kv_groups) <= target.kv_groups
    ]
    if more:
        suggestion += f" or --heads {more[0]} ({target.kv_groups} KV groups)"
    raise GrowError(
        f"cannot grow {source.heads} heads / {source.kv_groups} KV groups into {target.heads} / "
        f"{target.kv_groups}: each source group's {per_source} heads need "
        f"{needed // source.kv_groups} target groups of {per_target}, i.e. {needed} KV groups "
        f"(rule: G*ceil((H/G)/(H'/G')) <= G'); {suggestion}"
    )


@dataclass(frozen=True)
class HeadMaps:
    """`query` maps target query heads to source heads, `groups` target KV groups to source groups."""

    query: IndexMap
    groups: IndexMap


def head_maps(source: ModelShape, target: ModelShape, generator: torch.Generator) -> HeadMaps:
    """Assign target query heads and KV groups to source ones, respecting the group rule.

    The first G*ceil(r/r') target groups cover every source head in order (so with r' = r the old
    heads stay in place, g(i) = i); remaining slots and groups pick a source group, then a head of
    that group, uniformly at random.
    """
    check_gqa(source, target)
    r, r_t = source.heads // source.kv_groups, target.heads // target.kv_groups
    per_group = math.ceil(r / r_t)
    query: list[int] = []
    groups: list[int] = []
    for b in range(target.kv_groups):
        if b < source.kv_groups * per_group:
            group, chunk = divmod(b, per_group)
            slots = [chunk * r_t + t for t in range(r_t)]
        else:
            group = int(torch.randint(0, source.kv_groups, (1,), generator=generator))
            slots = [r] * r_t  # all random
        for slot in slots:
            if slot >= r:
                slot = int(torch.randint(0, r, (1,), generator=generator))
            query.append(group * r + slot)
        groups.append(group)
    return HeadMaps(query=IndexMap(source.heads, tuple(query)), groups=IndexMap(source.kv_groups, tuple(groups)))
