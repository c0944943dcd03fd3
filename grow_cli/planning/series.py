"""Which sizes form the series, how many tokens each gets, and whether each grows into the next.

A series is given either explicitly (`--sizes 1B,2B,4B,8B`) or as a geometric ladder ending at
`--max` (`--stages`, `--factor`, `--min`: any two fix the third; default 4 stages, factor 2).
Sizes are rounded to three significant digits so the name and the nominal count agree
("2.83B" is 2.83e9). Shapes come from the presets where the name is one (1B/2B/4B/8B), else from
the auto-shaper with the largest member's head dim, so every member grows by whole heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from grow_cli.errors import GrowError
from grow_cli.growth_rules import gqa_growable, growth_problems
from grow_cli.planning.attention import KVGroupsRule
from grow_cli.shape import PRESETS, ModelShape, resolve_shape
from grow_cli.units import parse_count, parse_multiplier, size_name

DEFAULT_STAGES = 4
DEFAULT_FACTOR = 2.0
CHINCHILLA_TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022: ~20 tokens per parameter


def _canonical(value: float) -> tuple[str, float]:
    name = size_name(value)
    return name, parse_count(name)


def _check_increasing(names: list[str], nominals: list[float]) -> None:
    for (a, na), (b, nb) in zip(zip(names, nominals), zip(names[1:], nominals[1:])):
        if nb <= na:
            raise GrowError(
                f"sizes must strictly increase from the first stage to the last, but {b} follows {a}; "
                "list them smallest first, e.g. --sizes 1B,2B,4B,8B"
            )


def series_sizes(
    max_size: str | None = None,
    min_size: str | None = None,
    stages: int | None = None,
    factor: str | None = None,
    sizes: str | None = None,
) -> list[str]:
    """The series' canonical size names, smallest first."""
    if sizes is not None:
        if any(v is not None for v in (max_size, min_size, stages, factor)):
            raise GrowError("--sizes lists the whole series; drop --max, --min, --stages and --factor")
        items = [s for s in sizes.split(",") if s.strip()]
        if not items:
            raise GrowError("--sizes is empty; list sizes smallest first, e.g. --sizes 1B,2B,4B,8B")
        resolved = [_canonical(parse_count(s, "model size")) for s in items]
        names, nominals = [r[0] for r in resolved], [r[1] for r in resolved]
        _check_increasing(names, nominals)
        return names
    if max_size is None:
        raise GrowError("say which series to plan: --max 8B (with --stages/--factor/--min) or --sizes 1B,2B,4B,8B")
    largest = parse_count(max_size, "--max size")
    ratio = None if factor is None else parse_multiplier(factor, "--factor")
    if ratio is not None and ratio <= 1:
        raise GrowError(f"--factor {factor} must be more than 1 (each stage is that many times the previous)")
    if stages is not None and stages < 1:
        raise GrowError(f"--stages {stages} must be at least 1")
    if min_size is not None:
        smallest = parse_count(min_size, "--min size")
        if smallest > largest:
            raise GrowError(f"--min {min_size} is larger than --max {max_size}")
        if stages is not None and ratio is not None:
            raise GrowError("--min, --stages and --factor over-determine the series; give at most two of them")
        span = largest / smallest
        if stages is not None:
            if stages < 2 and span > 1:
                raise GrowError(f"--stages {stages} cannot go from --min {min_size} to --max {max_size}; use 2 or more")
            ratio = span ** (1 / (stages - 1)) if stages > 1 else 1.0
        else:
            ratio = ratio or DEFAULT_FACTOR
            steps = math.log(span) / math.log(ratio)
            if abs(steps - round(steps)) > 0.01:
                raise GrowError(
                    f"--min {min_size} does not reach --max {max_size} in whole steps of x{ratio:g}; "
                    "give --stages instead of --factor, or list --sizes"
                )
            stages = round(steps) + 1
    stages = DEFAULT_STAGES if stages is None else stages
    ratio = DEFAULT_FACTOR if ratio is None else ratio
    resolved = [_canonical(largest / ratio ** (stages - 1 - i)) for i in range(stages)]
    names, nominals = [r[0] for r in resolved], [r[1] for r in resolved]
    _check_increasing(names, nominals)
    return names


def tokens_per_param(
    largest_nominal: float,
    chinchilla: str | None = None,
    per_param: float | None = None,
    tokens: str | None = None,
) -> float:
    """Scratch tokens per (nominal) parameter, the same for every stage (default: Chinchilla 1x)."""
    given = [flag for flag, value in (("--chinchilla", chinchilla), ("--tokens-per-param", per_param), ("--tokens", tokens)) if value is not None]
    if len(given) > 1:
        raise GrowError(f"{' and '.join(given)} both set the token budget; give one of them")
    if chinchilla is not None:
        return CHINCHILLA_TOKENS_PER_PARAM * parse_multiplier(chinchilla, "--chinchilla multiplier")
    if per_param is not None:
        if per_param <= 0:
            raise GrowError(f"--tokens-per-param {per_param} must be positive")
        return float(per_param)
    if tokens is not None:
        return parse_count(tokens, "--tokens budget") / largest_nominal
    return CHINCHILLA_TOKENS_PER_PARAM


@dataclass(frozen=True)
class SeriesMember:
    name: str
    nominal: float  # the count the name states; the reference FLOP accounting uses it
    shape: ModelShape


def resolve_series(
    names: list[str],
    *,
    tp: int = 1,
    pp: int = 1,
    vocab: int,
    seq_len: int,
    tied: bool = False,
    auto_shapes: bool = False,
    kv_groups: str = "auto",
) -> list[SeriesMember]:
    """Shapes for the series, checked against the layout and for growth stage to stage.

    `auto_shapes` replaces a preset that does not fit TP/PP (the reference 4B's 25 heads at
    TP 2) or the requested KV groups with an auto-shaped size that does; presets that fit are
    kept. `kv_groups` is the `--kv-groups` rule (`grow_cli.planning.attention`).
    """
    rule = KVGroupsRule.parse(kv_groups)
    groups = rule.series_groups(names)

    def shape_of(
        name: str, head_dim: int | None, kv: int | None, floor: ModelShape | None = None
    ) -> tuple[str, float, ModelShape]:
        common = dict(tp=tp, pp=pp, vocab=vocab, seq_len=seq_len, tied_embeddings=tied, head_dim=head_dim, kv_groups=kv, floor=floor)
        try:
            canonical, nominal, shape = resolve_shape(name, **common)
        except GrowError as error:
            if name not in PRESETS:
                raise
            # a preset whose heads do not split into `kv` groups
            if not auto_shapes:
                raise GrowError(f"{name}: {error}; pass --auto-shapes to auto-shape it") from None
            return resolve_shape(name, use_presets=False, **common)
        if auto_shapes and shape.layout_problems(tp, pp):
            return resolve_shape(name, use_presets=False, **common)
        return canonical, nominal, shape

    def grouped(name: str, head_dim: int, previous: ModelShape | None) -> tuple[str, float, ModelShape]:
        """The stage with the series' KV groups where it has more heads than that, else MHA."""
        canonical, nominal, shape = shape_of(name, head_dim, None, previous)
        if groups is None or shape.heads <= groups:
            return canonical, nominal, shape
        try:
            candidate = shape_of(name, head_dim, groups, previous)
        except GrowError:
            if rule.falls_back:  # a preset whose heads do not split into the groups
                return canonical, nominal, shape
            raise
        target = candidate[2]
        if rule.falls_back and previous is not None and not gqa_growable(previous, target.heads, target.kv_groups):
            return canonical, nominal, shape
        return candidate

    largest = shape_of(names[-1], None, None)[2]
    members: list[SeriesMember] = []
    for name in names:
        canonical, nominal, shape = grouped(name, largest.head_dim, members[-1].shape if members else None)
        try:
            shape.check_layout(tp, pp, name=canonical)
        except GrowError as error:
            hint = "" if auto_shapes else "; or pass --auto-shapes to auto-shape the sizes whose preset does not fit"
            raise GrowError(f"{error}{hint}") from None
        members.append(SeriesMember(canonical, nominal, shape))
    for source, target in zip(members, members[1:]):
        problems = growth_problems(source.shape, target.shape)
        if problems:
            raise GrowError(
                f"{source.name} ({source.shape.describe()}) cannot grow into {target.name} "
                f"({target.shape.describe()}): {'; '.join(problems)}; space the sizes further apart"
                + ("" if auto_shapes else " or pass --auto-shapes")
            )
    return members
