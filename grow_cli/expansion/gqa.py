"""Growing attention heads with grouped-query attention, exactly: which source head and KV group
each target head and group copies. The rule that says when this is possible lives in
`grow_cli.growth_rules` (the planner checks the same one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grow_cli.errors import GrowError
from grow_cli.expansion.maps import IndexMap
from grow_cli.growth_rules import gqa_problem
from grow_cli.shape import ModelShape


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
    problem = gqa_problem(source, target)
    if problem:
        raise GrowError(problem)
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
