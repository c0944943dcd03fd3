"""When one shape can grow into another: the rules `grow plan` and `grow expand` both apply.

Growth copies units (hidden channels, FFN neurons, layers, whole heads of a fixed head dim) and
never removes one, so every grown size must not shrink and the sizes it does not grow (head
dim, vocabulary, tied embeddings) must not change. With grouped-query attention every target
query head copies a source head s and the KV group it sits in must copy s's source group (K/V
weights copied, never divided), otherwise the copied head attends with the wrong keys. A source
group holds r = H/G heads and a target group r' = H'/G' slots, all filled from one source
group, so each source group needs ceil(r/r') target groups: exact growth is possible iff

    G * ceil(r / r') <= G'.

Multi-head attention (r = r' = 1) always satisfies it; 25 heads / 5 groups -> 32 / 8 does not.
The planner checks a series with these rules so that the expander never refuses a planned stage.
"""

from __future__ import annotations

import math

from grow_cli.errors import GrowError
from grow_cli.shape import ModelShape

GROWN_FIELDS = ("hidden", "ffn", "layers", "heads", "kv_groups")
KEPT_FIELDS = ("head_dim", "vocab", "tied_embeddings")


def gqa_groups_needed(source: ModelShape, heads: int, kv_groups: int) -> int:
    """KV groups an exact growth of `source` into `heads` query heads in `kv_groups` groups needs:
    G·ceil(r / r')."""
    return source.kv_groups * math.ceil((source.heads // source.kv_groups) / (heads // kv_groups))


def gqa_growable(source: ModelShape, heads: int, kv_groups: int) -> bool:
    """Whether `source`'s heads grow exactly into `heads` heads in `kv_groups` groups."""
    return heads % kv_groups == 0 and gqa_groups_needed(source, heads, kv_groups) <= kv_groups


def growable_kv_groups(source: ModelShape, heads: int) -> list[int]:
    """Every KV group count that divides `heads` and admits exact growth, smallest first."""
    return [g for g in range(source.kv_groups, heads + 1) if gqa_growable(source, heads, g)]


def gqa_problem(source: ModelShape, target: ModelShape) -> str | None:
    """Why the heads cannot grow exactly, with a feasible alternative (None when they can)."""
    if gqa_growable(source, target.heads, target.kv_groups):
        return None
    needed = gqa_groups_needed(source, target.heads, target.kv_groups)
    per_source, per_target = source.heads // source.kv_groups, target.heads // target.kv_groups
    text = (
        f"cannot grow {source.heads} heads / {source.kv_groups} KV groups into {target.heads} / {target.kv_groups} exactly: "
        f"each source group's {per_source} heads need {needed // source.kv_groups} target groups of "
        f"{per_target}, so the growth needs at least {needed} KV groups (rule: G*ceil((H/G)/(H'/G')) <= G')"
    )
    options = growable_kv_groups(source, target.heads)
    if options:
        alternative = min(options, key=lambda g: (abs(g - target.kv_groups), g))
        text += f"; use --kv-groups {alternative} ({target.heads} heads)"
    # or keep the requested groups with more heads per group
    more = [
        n * target.kv_groups
        for n in range(per_target + 1, per_source + 1)
        if gqa_growable(source, n * target.kv_groups, target.kv_groups)
    ]
    if more:
        text += f" or --heads {more[0]} ({target.kv_groups} KV groups)"
    return text


def growth_problems(source: ModelShape, target: ModelShape) -> list[str]:
    """Why `source` cannot be grown into `target` by width/depth growth (empty if it can)."""
    problems = []
    if target.head_dim != source.head_dim:
        problems.append(
            f"the target's head dim {target.head_dim} differs from the source's {source.head_dim}: heads grow as "
            f"whole heads, so head_dim must stay {source.head_dim}"
        )
    for name in KEPT_FIELDS[1:]:
        if getattr(target, name) != getattr(source, name):
            problems.append(f"{name} changes {getattr(source, name)} -> {getattr(target, name)}: growth keeps it")
    smaller = [f"{n} shrinks {getattr(source, n)} -> {getattr(target, n)}" for n in GROWN_FIELDS if getattr(target, n) < getattr(source, n)]
    if smaller:
        problems.append(f"{', '.join(smaller)}: the target is smaller than the source and growth never removes units")
    if problems:
        return problems
    if all(getattr(target, n) == getattr(source, n) for n in GROWN_FIELDS):
        return [f"the target has the source's shape ({source.describe()}); nothing to expand"]
    gqa = gqa_problem(source, target)
    return [] if gqa is None else [gqa]


def check_growth(source: ModelShape, target: ModelShape) -> None:
    """GrowError listing every reason `target` is not `source` grown (each reason names the sizes)."""
    problems = growth_problems(source, target)
    if problems:
        raise GrowError("; ".join(problems))
